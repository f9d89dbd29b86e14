//! Config files for `peer serve` and `peer sync`: a TOML file whose `[serve]` or `[sync]` table
//! holds the command's flags by their long names (`listen = "0.0.0.0:7447"`, `trust = ["…"]`,
//! `once = true`). The file's flags go before the command line's, so a flag given on the command
//! line overrides the file's (clap's `args_override_self`), and list flags (`trust`, `region`,
//! `allow_owner`…) add to the file's. Without `--config`, `$XDG_CONFIG_HOME/memsync/config.toml`
//! (or `~/.config/memsync/config.toml`) is read when it exists. Errors name the file, the line and
//! the key.

use clap::CommandFactory;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The commands that read a config file.
const COMMANDS: [&str; 2] = ["serve", "sync"];

/// The default config file, when it exists.
fn default_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    let f = base.join("memsync/config.toml");
    f.is_file().then_some(f)
}

/// `args` with the flags of the config file inserted after the subcommand (and `--config FILE`
/// removed), or an error naming the file, line and key.
pub fn expand<C: CommandFactory>(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(at) = args.iter().position(|a| COMMANDS.iter().any(|c| a == c)) else {
        return Ok(args);
    };
    let sub = args[at].to_string_lossy().into_owned();
    let mut rest: Vec<OsString> = Vec::new();
    let mut file: Option<PathBuf> = None;
    let mut it = args[at + 1..].iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            let f = it.next().ok_or("--config needs a FILE")?;
            file = Some(f.into());
        } else if let Some(f) = s.strip_prefix("--config=") {
            file = Some(f.into());
        } else {
            rest.push(a.clone());
        }
    }
    let Some(file) = file.or_else(default_file) else {
        return Ok(args);
    };
    let flags = flags_from::<C>(&file, &sub)?;
    let mut out: Vec<OsString> = args[..=at].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(rest);
    Ok(out)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The flags the `[sub]` table of `file` stands for.
fn flags_from<C: CommandFactory>(file: &Path, sub: &str) -> Result<Vec<String>, String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: {e}"))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    let Some(table) = doc.get(sub) else {
        return Ok(Vec::new());
    };
    let table = table
        .as_table()
        .ok_or_else(|| format!("{shown}: `{sub}` must be a table ([{sub}])"))?;
    let cmd = C::command();
    let cmd = cmd.find_subcommand(sub).expect("a subcommand of the CLI");
    let mut flags = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let line = key_line(&text, sub, key);
        let at = |what: String| format!("{shown}:{line}: key `{key}` in [{sub}]: {what}");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(&long) && long != "config")
        else {
            let known: Vec<String> = cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "config" && *l != "help")
                .map(|l| l.replace('-', "_"))
                .collect();
            return Err(at(format!("unknown key (known: {})", known.join(", "))));
        };
        let many = matches!(arg.get_action(), clap::ArgAction::Append);
        let switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        // A value, checked by the flag's own parser, so a bad one is reported here with its line.
        let scalar = |v: &toml::Value| -> Result<String, String> {
            let s = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(at(format!(
                        "a {} where a value was expected",
                        other.type_str()
                    )))
                }
            };
            // The flag alone, without its relations to other flags (which this command lacks).
            let alone = clap::Arg::new("value")
                .long(long.clone())
                .value_parser(arg.get_value_parser().clone())
                .allow_hyphen_values(arg.is_allow_hyphen_values_set());
            clap::Command::new("config")
                .no_binary_name(true)
                .arg(alone)
                .try_get_matches_from([format!("--{long}"), s.clone()])
                .map_err(|e| {
                    let e = e.to_string();
                    let first = e.lines().next().unwrap_or_default();
                    at(first.trim_start_matches("error: ").to_owned())
                })?;
            Ok(s)
        };
        match value {
            toml::Value::Boolean(b) if switch => {
                if *b {
                    flags.push(format!("--{long}"));
                }
            }
            _ if switch => return Err(at("true or false expected".into())),
            toml::Value::Array(items) if many => {
                for v in items {
                    flags.push(format!("--{long}"));
                    flags.push(scalar(v)?);
                }
            }
            toml::Value::Array(_) => return Err(at("one value expected, not a list".into())),
            v => {
                flags.push(format!("--{long}"));
                flags.push(scalar(v)?);
            }
        }
    }
    Ok(flags)
}

/// The line where `key` is set in the `[sub]` table of `text` (best effort: the first line
/// that assigns it after the table's header).
fn key_line(text: &str, sub: &str, key: &str) -> usize {
    let header = text.find(&format!("[{sub}]")).unwrap_or(0);
    let body = &text[header..];
    let found = body
        .lines()
        .scan(0usize, |off, l| {
            let start = *off;
            *off += l.len() + 1;
            Some((start, l))
        })
        .find(|(_, l)| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        });
    line_of(text, header + found.map_or(0, |(o, _)| o))
}
