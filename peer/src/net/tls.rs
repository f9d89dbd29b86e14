//! TLS 1.3 configuration for QUIC with mutual authentication by pinned fingerprints: each side
//! presents its self-signed certificate and accepts the other's only if the SHA-256 of its DER is
//! trusted (spec/PROTOCOL.md §2). Signatures are still verified, so a peer must hold the key.

use crate::net::identity::{Fingerprint, Identity, TrustSet};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::{Arc, Mutex};

/// Checks the peer's certificate against the trust set, on either side of the handshake, and
/// remembers the last fingerprint it refused so the caller can tell the user what to trust.
#[derive(Debug)]
pub struct PinnedVerifier {
    trust: TrustSet,
    provider: Arc<CryptoProvider>,
    /// The fingerprint of the last certificate refused, to name in the error.
    pub refused: Mutex<Option<Fingerprint>>,
}

impl PinnedVerifier {
    /// A verifier accepting exactly the fingerprints of `trust`.
    pub fn new(trust: TrustSet) -> Arc<Self> {
        Arc::new(PinnedVerifier {
            trust,
            provider: provider(),
            refused: Mutex::new(None),
        })
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let fp = Fingerprint::of(cert);
        if self.trust.contains(&fp) {
            Ok(())
        } else {
            *self.refused.lock().expect("verifier lock") = Some(fp);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

/// The signature checks both sides' verifiers share: TLS 1.2 is never offered, TLS 1.3
/// handshake signatures are verified with the provider's algorithms.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    signature_checks!();
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    signature_checks!();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client-side TLS: present `id`, accept servers in the verifier's trust set.
pub fn client_config(
    id: &Identity,
    verifier: Arc<PinnedVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![id.cert.clone()], id.key())?;
    c.alpn_protocols = vec![memsync_protocol::wire::ALPN.to_vec()];
    Ok(c)
}

/// Server-side TLS: present `id`, require a client certificate in the verifier's trust set.
pub fn server_config(
    id: &Identity,
    verifier: Arc<PinnedVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], id.key())?;
    c.alpn_protocols = vec![memsync_protocol::wire::ALPN.to_vec()];
    c.max_early_data_size = 0;
    Ok(c)
}
