//! Ownership epochs (spec §8.8): whom a peer holding a copy of a region admits as its owner.
//!
//! An epoch is a counter and the identity of the owner that holds it, ordered by counter and
//! then by identity, so two owners never share one. Epoch 1 is every first owner's: a region
//! sticks to the first owner a peer admitted at it. Every handoff and promotion mints the next
//! counter for the new owner. A peer admits an OPEN of its recorded owner at its recorded epoch or
//! any OPEN of a newer epoch, and fences every older one. These are pure decisions: the caller
//! persists the record, and ends every stream of an older epoch before it answers a newer one.

use crate::wire::ErrorCode;

/// The epoch of a region without a handoff or promotion in its history.
pub const FIRST: u64 = 1;

/// Who owns a region, as a peer holding a copy of it remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder<P> {
    /// The peer streaming it here.
    Peer(P),
    /// This peer, since it accepted a handoff.
    Here,
    /// This peer, promoted by an operator after the owner `lost` was declared lost.
    Promoted {
        /// The owner declared lost.
        lost: P,
    },
}

/// A region's owner and the epoch counter it owns the region at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record<P> {
    /// Who owns it.
    pub holder: Holder<P>,
    /// The epoch's counter (at least [`FIRST`]).
    pub epoch: u64,
}

/// What a peer does with an OPEN of epoch `epoch` from `who`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission<P> {
    /// The recorded owner at the recorded epoch: go on.
    Same,
    /// A newer epoch (or the first owner): record this, after ending every stream of the older
    /// epoch, and only if local policy lets the new owner own the region.
    Adopt(Record<P>),
    /// Refused with `code`; `refusal` says why.
    Refuse(ErrorCode, Refusal<P>),
}

/// Why an OPEN was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal<P> {
    /// The OPEN's epoch is older than the recorded one, held by `holder`: the sender is fenced.
    Fenced {
        /// The recorded owner.
        holder: Holder<P>,
        /// The recorded epoch.
        epoch: u64,
    },
    /// Another first owner: at epoch 1 a region sticks to the owner admitted first.
    Taken {
        /// The recorded owner.
        owner: P,
    },
}

/// Decides on an OPEN from `who` at epoch counter `epoch`, given the region's `record` here and
/// `me`, this peer's identity (the owner of a region held [`Holder::Here`] or
/// [`Holder::Promoted`]).
pub fn admit<P: Copy + Ord>(record: Option<&Record<P>>, me: P, who: P, epoch: u64) -> Admission<P> {
    let adopt = Admission::Adopt(Record {
        holder: Holder::Peer(who),
        epoch,
    });
    let Some(r) = record else {
        return adopt;
    };
    if r.holder == Holder::Peer(who) && epoch == r.epoch {
        return Admission::Same;
    }
    if epoch == FIRST && r.epoch == FIRST {
        return match r.holder {
            Holder::Peer(owner) => {
                Admission::Refuse(ErrorCode::Forbidden, Refusal::Taken { owner })
            }
            Holder::Here | Holder::Promoted { .. } => fenced(r),
        };
    }
    let owner = match r.holder {
        Holder::Peer(p) => p,
        Holder::Here | Holder::Promoted { .. } => me,
    };
    if (epoch, who) > (r.epoch, owner) {
        adopt
    } else {
        fenced(r)
    }
}

fn fenced<P: Copy>(r: &Record<P>) -> Admission<P> {
    let code = match r.holder {
        // The answer that settles a handoff probe (spec §8.6).
        Holder::Here => ErrorCode::HandedOver,
        Holder::Peer(_) | Holder::Promoted { .. } => ErrorCode::Fenced,
    };
    Admission::Refuse(
        code,
        Refusal::Fenced {
            holder: r.holder,
            epoch: r.epoch,
        },
    )
}

/// The record of a region this peer takes over by a handoff at epoch `epoch`, or `None` when the
/// counter is exhausted.
pub fn handed_over<P>(epoch: u64) -> Option<Record<P>> {
    Some(Record {
        holder: Holder::Here,
        epoch: epoch.checked_add(1)?,
    })
}

/// The record of a region promoted here from `record`, whose owner was lost, or `None` when the
/// region is not held for a peer (or the counter is exhausted).
pub fn promoted<P: Copy>(record: &Record<P>) -> Option<Record<P>> {
    match record.holder {
        Holder::Peer(lost) => Some(Record {
            holder: Holder::Promoted { lost },
            epoch: record.epoch.checked_add(1)?,
        }),
        Holder::Here | Holder::Promoted { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u8 = 5;

    fn peer(owner: u8, epoch: u64) -> Record<u8> {
        Record {
            holder: Holder::Peer(owner),
            epoch,
        }
    }

    fn code(a: Admission<u8>) -> Option<ErrorCode> {
        match a {
            Admission::Refuse(c, _) => Some(c),
            _ => None,
        }
    }

    #[test]
    fn the_first_owner_sticks_and_newer_epochs_win() {
        assert_eq!(admit(None, ME, 1, 1), Admission::Adopt(peer(1, 1)));
        let r = peer(1, 1);
        assert_eq!(admit(Some(&r), ME, 1, 1), Admission::Same);
        // Another first owner, whichever identity sorts first: refused, as before epochs.
        assert_eq!(code(admit(Some(&r), ME, 2, 1)), Some(ErrorCode::Forbidden));
        assert_eq!(
            code(admit(Some(&peer(2, 1)), ME, 1, 1)),
            Some(ErrorCode::Forbidden)
        );
        // A minted epoch takes the region over; the older owner is fenced from then on.
        assert_eq!(admit(Some(&r), ME, 2, 2), Admission::Adopt(peer(2, 2)));
        assert_eq!(
            code(admit(Some(&peer(2, 2)), ME, 1, 1)),
            Some(ErrorCode::Fenced)
        );
        // Two owners minted the same counter (a promotion while the owner handed off): the
        // identity orders them, so each epoch has one owner.
        assert_eq!(
            admit(Some(&peer(2, 2)), ME, 3, 2),
            Admission::Adopt(peer(3, 2))
        );
        assert_eq!(
            code(admit(Some(&peer(3, 2)), ME, 2, 2)),
            Some(ErrorCode::Fenced)
        );
    }

    #[test]
    fn a_region_owned_here_answers_older_epochs_and_yields_to_newer() {
        let here = handed_over::<u8>(1).unwrap();
        assert_eq!(here.epoch, 2);
        // The probe of the owner whose HANDOFF_ACK was lost: HANDED_OVER (spec §8.6).
        assert_eq!(
            code(admit(Some(&here), ME, 1, 1)),
            Some(ErrorCode::HandedOver)
        );
        assert_eq!(
            code(admit(Some(&here), ME, 3, 2)),
            Some(ErrorCode::HandedOver)
        );
        // Another peer minted the same counter: the identity orders the two owners.
        assert_eq!(admit(Some(&here), ME, 9, 2), Admission::Adopt(peer(9, 2)));
        // The region moved on from here (this peer handed it over in turn).
        assert_eq!(admit(Some(&here), ME, 1, 3), Admission::Adopt(peer(1, 3)));
        let p = promoted(&peer(1, 4)).unwrap();
        assert_eq!(
            p,
            Record {
                holder: Holder::Promoted { lost: 1 },
                epoch: 5
            }
        );
        assert_eq!(code(admit(Some(&p), ME, 1, 4)), Some(ErrorCode::Fenced));
        assert_eq!(promoted(&p), None);
        assert_eq!(handed_over::<u8>(u64::MAX), None);
    }
}
