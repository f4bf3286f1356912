//! `[storage]`: where the audit log and the records derived from it live.
//! sled under `data_dir` (the default) or a PostgreSQL database, whose
//! connection string comes from `url` (no password in it: a config file is
//! read by too many people) or the environment variable `url_env`, and whose
//! password may come from `password_file`. Secrets are read at start-up and
//! never shown: `Debug` redacts them and errors name keys, not values.

use super::validate::Cx;
use super::{ConfigError, Files, Secret, invalid};
use serde::Deserialize;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How far this machine's clock may be from the database's at start-up.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub max_clock_skew: Option<String>,
}

/// `[storage]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageConfig {
    /// sled under `data_dir`.
    #[default]
    Sled,
    Postgres(PostgresConfig),
}

/// Where prodgate finds its PostgreSQL database.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The connection string (a `postgres://` URL or `key=value` pairs);
    /// `None` only when `check-config` ran where `url_env` is not set.
    pub connection: Option<Secret>,
    /// The password from `password_file`, if one is named and readable.
    pub password: Option<Secret>,
    /// Where the settings came from (`url = "…"` without secrets, or
    /// `url_env = NAME`, and the password file's path): what a reload
    /// compares, so a rotated password is not a change of database.
    pub origin: String,
    /// How far this machine's clock may be from the database's when the
    /// store opens: every replica's entries share one log whose times never
    /// go back, so one clock ahead would hold every later entry at its time.
    pub max_clock_skew: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("origin", &self.origin)
            .field("connection", &self.connection)
            .field("password", &self.password)
            .field("max_clock_skew", &self.max_clock_skew)
            .finish()
    }
}

impl StorageConfig {
    /// What a message or a reload check may show: the backend and the keys
    /// it was configured by, no secret.
    pub fn describe(&self) -> String {
        match self {
            StorageConfig::Sled => "sled".into(),
            StorageConfig::Postgres(p) => format!("postgres ({})", p.origin),
        }
    }
}

/// `[storage]`; absent: sled.
pub(super) fn storage(raw: Option<RawStorage>, cx: &mut Cx) -> Result<StorageConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(StorageConfig::Sled);
    };
    match raw.backend.as_deref() {
        None | Some("sled") => {
            for (key, set) in [
                ("storage.url", raw.url.is_some()),
                ("storage.url_env", raw.url_env.is_some()),
                ("storage.password_file", raw.password_file.is_some()),
                ("storage.max_clock_skew", raw.max_clock_skew.is_some()),
            ] {
                if set {
                    return Err(invalid(key, "applies only with backend = \"postgres\""));
                }
            }
            Ok(StorageConfig::Sled)
        }
        Some("postgres") => postgres(raw, cx).map(StorageConfig::Postgres),
        Some(other) => Err(invalid(
            "storage.backend",
            format!("{other:?} is not one of \"sled\", \"postgres\""),
        )),
    }
}

/// The flags of `prodgate migrate` that name its PostgreSQL database and
/// the `[storage]` keys they stand for: validated as the keys are, and an
/// error names the flag.
const FLAGS: [(&str, &str); 3] = [
    ("url_env", "--to-env"),
    ("url", "--to"),
    ("password_file", "--password-file"),
];

/// A PostgreSQL target given as `prodgate migrate --to`/`--to-env`/
/// `--password-file`, with the rules of `url`/`url_env`/`password_file`
/// (no password in `--to`; files are read now).
pub fn postgres_from_flags(
    to: Option<&str>,
    to_env: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<PostgresConfig, ConfigError> {
    let raw = RawStorage {
        backend: Some("postgres".into()),
        url: to.map(str::to_owned),
        url_env: to_env.map(str::to_owned),
        password_file: password_file.map(std::path::Path::to_owned),
        max_clock_skew: None,
    };
    postgres(raw, &mut Cx::new(super::Files::Read)).map_err(|e| match e {
        ConfigError::Invalid { key, mut message } => {
            // `url_env` before `url`: one contains the other.
            for (k, flag) in FLAGS {
                message = message.replace(k, flag);
            }
            let key = FLAGS
                .iter()
                .find(|(k, _)| key == format!("storage.{k}"))
                .map_or(key, |(_, flag)| (*flag).to_owned());
            ConfigError::Invalid { key, message }
        }
        other => other,
    })
}

fn postgres(raw: RawStorage, cx: &mut Cx) -> Result<PostgresConfig, ConfigError> {
    let (connection, mut origin) = match (&raw.url, &raw.url_env) {
        (Some(_), Some(_)) => {
            return Err(invalid("storage.url", "set url or url_env, not both"));
        }
        (None, None) => {
            return Err(invalid(
                "storage.url",
                "backend = \"postgres\" needs url or url_env",
            ));
        }
        (Some(url), None) => {
            // The file's text is not secret, so the parser's message may
            // quote it; a password in it is refused below.
            let parsed = tokio_postgres::Config::from_str(url)
                .map_err(|e| invalid("storage.url", format!("not a connection string: {e}")))?;
            if parsed.get_password().is_some() {
                return Err(invalid(
                    "storage.url",
                    "holds a password; put it in password_file or the whole string in url_env",
                ));
            }
            (Some(Secret::new(url.as_bytes())), format!("url = {url:?}"))
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(url) => {
                // Never quote the value or the parser's message: the
                // variable may hold a password.
                if tokio_postgres::Config::from_str(&url).is_err() {
                    return Err(invalid(
                        "storage.url_env",
                        format!(
                            "environment variable {var} is not a connection string (postgres://user@host:port/db or key=value pairs)"
                        ),
                    ));
                }
                (
                    Some(Secret::new(url.into_bytes())),
                    format!("url_env = {var}"),
                )
            }
            Err(_) if cx.files == Files::WarnIfAbsent => {
                cx.warn(
                    "storage.url_env",
                    format!(
                        "environment variable {var} is not set here; `prodgate serve` will need it"
                    ),
                );
                (None, format!("url_env = {var}"))
            }
            Err(_) => {
                return Err(invalid(
                    "storage.url_env",
                    format!("environment variable {var} is not set"),
                ));
            }
        },
    };
    let password = match &raw.password_file {
        None => None,
        Some(path) => {
            origin.push_str(&format!(", password_file = {:?}", path.display()));
            match cx.read("storage.password_file", path)? {
                None => None,
                Some(bytes) => {
                    // `echo pw > file` leaves a line end that is no part of it.
                    let text = String::from_utf8(bytes).map_err(|_| {
                        invalid(
                            "storage.password_file",
                            format!("{} is not UTF-8 text", path.display()),
                        )
                    })?;
                    let text = text.trim_end_matches(['\r', '\n']);
                    if text.is_empty() {
                        return Err(invalid(
                            "storage.password_file",
                            format!("{} is empty", path.display()),
                        ));
                    }
                    Some(Secret::new(text.as_bytes()))
                }
            }
        }
    };
    let max_clock_skew = super::validate::duration(
        "storage.max_clock_skew",
        raw.max_clock_skew.as_deref(),
        DEFAULT_MAX_CLOCK_SKEW,
    )?;
    Ok(PostgresConfig {
        connection,
        password,
        origin,
        max_clock_skew,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, StorageConfig};

    fn parse(storage: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("[storage]\n{storage}\n"))
    }

    fn refused(storage: &str) -> (String, String) {
        match parse(storage) {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("{storage}: {other:?}"),
        }
    }

    #[test]
    fn sled_is_the_default_and_takes_no_postgres_keys() {
        assert_eq!(Config::parse("").unwrap().storage, StorageConfig::Sled);
        assert_eq!(
            parse("backend = \"sled\"").unwrap().storage,
            StorageConfig::Sled
        );
        let (key, _) = refused("url = \"postgres://a@h/db\"");
        assert_eq!(key, "storage.url");
        let (key, message) = refused("backend = \"mysql\"");
        assert_eq!(key, "storage.backend");
        assert!(message.contains("\"postgres\""), "{message}");
    }

    #[test]
    fn postgres_needs_exactly_one_source_and_no_password_in_the_file() {
        let c =
            parse("backend = \"postgres\"\nurl = \"postgres://prodgate@127.0.0.1:5432/prodgate\"")
                .unwrap();
        let StorageConfig::Postgres(p) = &c.storage else {
            panic!("{:?}", c.storage)
        };
        assert!(p.connection.is_some() && p.password.is_none());
        assert_eq!(refused("backend = \"postgres\"").0, "storage.url");
        let (key, message) = refused(
            "backend = \"postgres\"\nurl = \"postgres://a@h/db\"\nurl_env = \"PRODGATE_TEST_UNSET\"",
        );
        assert_eq!(key, "storage.url");
        assert!(message.contains("not both"), "{message}");
        let (key, message) = refused("backend = \"postgres\"\nurl = \"postgres://a:hunter2@h/db\"");
        assert_eq!(key, "storage.url");
        assert!(message.contains("password_file"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let (key, _) = refused("backend = \"postgres\"\nurl_env = \"PRODGATE_TEST_NEVER_SET\"");
        assert_eq!(key, "storage.url_env");
    }

    #[test]
    fn max_clock_skew_defaults_to_two_seconds_and_applies_only_to_postgres() {
        let pg = "backend = \"postgres\"\nurl = \"postgres://a@h/db\"";
        let skew = |extra: &str| match parse(&format!("{pg}\n{extra}")).map(|c| c.storage) {
            Ok(StorageConfig::Postgres(p)) => Ok(p.max_clock_skew),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(skew("").unwrap(), std::time::Duration::from_secs(2));
        assert_eq!(
            skew("max_clock_skew = \"500ms\"").unwrap(),
            std::time::Duration::from_millis(500)
        );
        for bad in ["max_clock_skew = \"0s\"", "max_clock_skew = \"soon\""] {
            match skew(bad) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "storage.max_clock_skew"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(
            refused("max_clock_skew = \"2s\"").0,
            "storage.max_clock_skew"
        );
    }

    #[test]
    fn migrate_flags_follow_the_keys_rules_and_errors_name_the_flag() {
        use crate::config::postgres_from_flags;
        let p = postgres_from_flags(Some("postgres://prodgate@127.0.0.1/prodgate"), None, None)
            .unwrap();
        assert!(p.connection.is_some() && p.password.is_none());
        let refused = |r: Result<_, ConfigError>| match r {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("{other:?}"),
        };
        let (key, message) = refused(postgres_from_flags(
            Some("postgres://a:hunter2@h/db"),
            None,
            None,
        ));
        assert_eq!(key, "--to");
        assert!(message.contains("--password-file") && message.contains("--to-env"));
        assert!(!message.contains("hunter2"), "{message}");
        let (key, _) = refused(postgres_from_flags(
            None,
            Some("PRODGATE_TEST_NEVER_SET"),
            None,
        ));
        assert_eq!(key, "--to-env");
        let (key, _) = refused(postgres_from_flags(
            Some("postgres://a@h/db"),
            None,
            Some(std::path::Path::new("/nonexistent/prodgate-pw")),
        ));
        assert_eq!(key, "--password-file");
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        // SAFETY: no other test reads or writes this variable.
        unsafe {
            std::env::set_var(
                "PRODGATE_TEST_PG_URL",
                "postgres://prodgate:env-s3cret@127.0.0.1/prodgate",
            );
            std::env::set_var(
                "PRODGATE_TEST_PG_BAD",
                "postgres://u:env-s3cret@h:notaport/db",
            );
        }
        let c = parse(&format!(
            "backend = \"postgres\"\nurl_env = \"PRODGATE_TEST_PG_URL\"\npassword_file = {:?}",
            file.display().to_string()
        ))
        .unwrap();
        let StorageConfig::Postgres(p) = &c.storage else {
            panic!("{:?}", c.storage)
        };
        assert_eq!(p.password.as_ref().unwrap().expose(), b"s3cret-pw");
        let shown = format!("{c:?} {}", c.storage.describe());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("PRODGATE_TEST_PG_URL"), "{shown}");
        let (key, message) = refused("backend = \"postgres\"\nurl_env = \"PRODGATE_TEST_PG_BAD\"");
        assert_eq!(key, "storage.url_env");
        assert!(!message.contains("s3cret"), "{message}");
    }
}
