//! The AWS shared credentials and config files (`~/.aws/credentials`, `~/.aws/config`), read
//! for one profile the way the AWS CLI reads them. Hand-written: `object_store` no longer reads
//! them, and the AWS SDK's loader would bring the whole SDK for two INI files.

use std::collections::HashMap;
use std::path::PathBuf;

/// One profile's settings from both files (credentials file first).
pub struct Profile {
    /// `AWS_PROFILE`, else `default`.
    pub name: String,
    /// Where the credentials were looked for.
    pub credentials_file: PathBuf,
    values: HashMap<String, String>,
}

impl Profile {
    /// Reads profile `AWS_PROFILE` (or `default`); missing files are empty.
    pub fn load() -> Profile {
        let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let file = |var: &str, default: &str| {
            std::env::var_os(var).map_or_else(|| home.join(".aws").join(default), PathBuf::from)
        };
        let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = file("AWS_CONFIG_FILE", "config");
        let mut values = HashMap::new();
        // In the config file, profiles other than the default are `[profile NAME]`.
        let config_section = match name.as_str() {
            "default" => "default".to_owned(),
            n => format!("profile {n}"),
        };
        for (path, section) in [
            (&config_file, config_section),
            (&credentials_file, name.clone()),
        ] {
            if let Ok(text) = std::fs::read_to_string(path) {
                values.extend(section_of(&text, &section));
            }
        }
        Profile {
            name,
            credentials_file,
            values,
        }
    }

    /// A setting of the profile.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Key id, secret and session token, if the profile has keys.
    pub fn credentials(&self) -> Option<(&str, &str, Option<&str>)> {
        Some((
            self.get("aws_access_key_id")?,
            self.get("aws_secret_access_key")?,
            self.get("aws_session_token"),
        ))
    }
}

/// The `key = value` lines of `[section]` in INI `text`.
fn section_of(text: &str, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = s.trim() == section;
        } else if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            out.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::section_of;

    #[test]
    fn a_profile_section_is_read_and_others_are_not() {
        let text = "[default]\naws_access_key_id = A\n# note\n[other]\naws_access_key_id=B\n\
                    aws_secret_access_key = S\n";
        assert_eq!(section_of(text, "other")["aws_access_key_id"], "B");
        assert_eq!(section_of(text, "other")["aws_secret_access_key"], "S");
        assert_eq!(section_of(text, "default").len(), 1);
        assert!(section_of(text, "none").is_empty());
    }
}
