//! The flags of `POST /v1/ingest/sns` (SNS push ingest): which topics may push,
//! and, for tests and private endpoints only, where the SNS certificate and
//! `SubscribeURL` fetches go. Resolved into [`SnsConfig`] by
//! [`super::Config::resolve`] (flag or environment over the TOML file).

use super::ConfigError;

/// `stackpulse serve` flags of the SNS ingest endpoint.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SnsArgs {
    /// ARN of an SNS topic whose signed notifications `POST /v1/ingest/sns` accepts,
    /// e.g. arn:aws:sns:eu-west-1:123456789012:stack-events (repeatable; env:
    /// comma-separated) [default: none, the endpoint answers 404].
    #[arg(
        long = "sns-topic-arn",
        env = "STACKPULSE_SNS_TOPIC_ARNS",
        value_name = "ARN",
        value_delimiter = ','
    )]
    pub sns_topic_arns: Vec<String>,
    /// For tests and private endpoints only: fetch SNS signing certificates and
    /// `SubscribeURL`s from this base URL (their path and query appended) instead of
    /// https://sns.<region>.amazonaws.com; the messages' URLs must still name an SNS
    /// host [default: AWS].
    #[arg(long, env = "STACKPULSE_SNS_ENDPOINT_URL", value_name = "URL")]
    pub sns_endpoint_url: Option<String>,
}

/// The resolved [`SnsArgs`].
#[derive(Debug, Clone, Default)]
pub struct SnsConfig {
    /// Topics allowed to push; empty: the endpoint is off (404).
    pub topic_arns: Vec<String>,
    /// Where certificate and `SubscribeURL` fetches go instead of the SNS host.
    pub endpoint_url: Option<url::Url>,
}

/// Whether `arn` is an SNS topic ARN: `arn:<partition>:sns:<region>:<account>:<name>`.
fn is_topic_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    matches!(
        parts.as_slice(),
        ["arn", partition, "sns", region, account, name]
            if partition.starts_with("aws")
                && !region.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && !name.is_empty()
    )
}

/// Flags over the file's `sns_topic_arns` / `sns_endpoint_url`.
pub fn resolve(
    args: &SnsArgs,
    file_arns: Option<Vec<String>>,
    file_endpoint: Option<String>,
) -> Result<SnsConfig, ConfigError> {
    let arns = if args.sns_topic_arns.is_empty() {
        file_arns.unwrap_or_default()
    } else {
        args.sns_topic_arns.clone()
    };
    let topic_arns = arns
        .into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .map(|a| {
            if is_topic_arn(&a) {
                Ok(a)
            } else {
                Err(ConfigError::Invalid {
                    name: "sns-topic-arn",
                    message: format!(
                        "{a:?} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)"
                    ),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let endpoint_url = match args
        .sns_endpoint_url
        .clone()
        .or(file_endpoint)
        .filter(|u| !u.trim().is_empty())
    {
        None => None,
        Some(raw) => {
            let invalid = |why: &str| ConfigError::Invalid {
                name: "sns-endpoint-url",
                message: format!("{raw:?} {why}"),
            };
            let url = url::Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid("is not an http(s) URL"));
            }
            Some(url)
        }
    };
    Ok(SnsConfig {
        topic_arns,
        endpoint_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_arns_and_endpoint_are_checked() {
        let args = |arns: &[&str], url: Option<&str>| SnsArgs {
            sns_topic_arns: arns.iter().map(|s| s.to_string()).collect(),
            sns_endpoint_url: url.map(str::to_owned),
        };
        let ok = resolve(
            &args(
                &[" arn:aws:sns:eu-west-1:123456789012:stacks ", ""],
                Some("http://127.0.0.1:9/"),
            ),
            None,
            None,
        )
        .expect("valid");
        assert_eq!(ok.topic_arns, ["arn:aws:sns:eu-west-1:123456789012:stacks"]);
        assert!(ok.endpoint_url.is_some());
        let from_file = resolve(
            &args(&[], None),
            Some(vec!["arn:aws-cn:sns:cn-north-1:123456789012:t".into()]),
            None,
        )
        .expect("file");
        assert_eq!(from_file.topic_arns.len(), 1);
        assert!(from_file.endpoint_url.is_none());
        for bad in [
            "stacks",
            "arn:aws:sqs:eu-west-1:123456789012:stacks",
            "arn:aws:sns:eu-west-1:1234:stacks",
            "arn:aws:sns:eu-west-1:123456789012:",
        ] {
            assert!(resolve(&args(&[bad], None), None, None).is_err(), "{bad}");
        }
        for bad in ["ftp://x/", "not a url"] {
            assert!(resolve(&args(&[], Some(bad)), None, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_toml_file_sets_them_and_flags_win() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(
            file,
            "sns_topic_arns = [\"arn:aws:sns:eu-west-1:123456789012:from-file\"]\n\
             sns_endpoint_url = \"http://127.0.0.1:9\""
        )
        .expect("write");
        let mut args = super::super::ServeArgs {
            config: Some(file.path().to_path_buf()),
            ..Default::default()
        };
        let c = super::super::Config::resolve(&args).expect("config");
        assert_eq!(
            c.sns.topic_arns,
            ["arn:aws:sns:eu-west-1:123456789012:from-file"]
        );
        assert_eq!(
            c.sns.endpoint_url.map(String::from).as_deref(),
            Some("http://127.0.0.1:9/")
        );
        args.sns.sns_topic_arns = vec!["arn:aws:sns:eu-west-1:123456789012:flag".into()];
        let c = super::super::Config::resolve(&args).expect("config");
        assert_eq!(
            c.sns.topic_arns,
            ["arn:aws:sns:eu-west-1:123456789012:flag"]
        );
        assert!(super::super::Config::resolve(&Default::default())
            .expect("config")
            .sns
            .topic_arns
            .is_empty());
    }
}
