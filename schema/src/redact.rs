//! Secrets out of messages and log lines: every place that names a connection string prints it
//! through [`uri`], so a password in `--mongo-uri` never reaches a terminal, a log or an error.

/// What a redacted secret reads as.
pub const REDACTED: &str = "****";

/// `scheme://user:password@hosts/...` with the password replaced by [`REDACTED`]; the user, hosts,
/// database and options stay, since they are what a reader needs to see which server was meant.
/// Text without credentials comes back unchanged.
pub fn uri(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &text[rest_start..];
    // Credentials end at the last `@` before the path or options: a password must percent-encode
    // `@`, `/` and `?`, but an unencoded `@` in it is common enough to be handled.
    let authority_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return text.to_owned();
    };
    let user = match authority[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:{REDACTED}"),
        None => authority[..at].to_owned(),
    };
    format!("{}{user}{}", &text[..rest_start], &rest[at..])
}

/// A `KEY=VALUE` client setting for a log line: the value hidden when the key names a secret
/// (`sasl.password`, `ssl.key.password`, `...secret...`, `...token...`).
pub fn setting(key: &str, value: &str) -> String {
    let lower = key.to_ascii_lowercase();
    if ["password", "secret", "token", "credential"].iter().any(|word| lower.contains(word)) {
        format!("{key}={REDACTED}")
    } else {
        format!("{key}={value}")
    }
}

/// `text` (a client's error message) with the values of the secret `settings` replaced by
/// [`REDACTED`]: librdkafka quotes a refused value, which may be `sasl.password`'s.
pub fn secret_values(text: &str, settings: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (key, value) in settings {
        if !value.is_empty() && setting(key, value) != format!("{key}={value}") {
            text = text.replace(value.as_str(), REDACTED);
        }
    }
    text
}

/// A `KEY=VALUE` client setting from a flag (`--kafka-opt`). A malformed one is refused without
/// echoing it whole: a mistyped `sasl.password:secret` must not reach the terminal.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => {
            let key: String = text.chars().take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).collect();
            Err(format!("expected KEY=VALUE, got a setting without `=` starting {key:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            uri("mongodb://alice:s3cret@db:27017/iot?authSource=admin"),
            "mongodb://alice:****@db:27017/iot?authSource=admin"
        );
        assert_eq!(uri("mongodb+srv://bob:p@ss@cluster.example/x"), "mongodb+srv://bob:****@cluster.example/x");
        assert_eq!(uri("mongodb://u:pw@h1:1,h2:2/?replicaSet=rs"), "mongodb://u:****@h1:1,h2:2/?replicaSet=rs");
    }

    #[test]
    fn text_without_credentials_is_unchanged() {
        for text in ["mongodb://127.0.0.1:27017", "mongodb://onlyuser@db/", "not a uri", "", "mongodb://h/?x=a@b"] {
            assert_eq!(uri(text), text);
        }
    }

    #[test]
    fn secret_settings_are_hidden() {
        assert_eq!(setting("sasl.password", "x"), "sasl.password=****");
        assert_eq!(setting("security.protocol", "SASL_SSL"), "security.protocol=SASL_SSL");
    }

    #[test]
    fn secret_values_are_hidden_in_messages() {
        let settings = [("sasl.password".to_owned(), "hunter2".to_owned()), ("client.id".to_owned(), "me".to_owned())];
        assert_eq!(secret_values("auth hunter2 failed for me", &settings), "auth **** failed for me");
    }

    #[test]
    fn settings_parse_without_echoing_a_malformed_one() {
        assert_eq!(parse_key_value("a.b=c=d"), Ok(("a.b".into(), "c=d".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
        let err = parse_key_value("sasl.password:hunter2").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
