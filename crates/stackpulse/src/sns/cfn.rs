//! The `Message` of a CloudFormation stack notification, as CloudFormation
//! publishes it to the stack's `NotificationARNs`: one `Key='value'` per line
//! (StackId, Timestamp, EventId, LogicalResourceId, ResourceStatus, ResourceType,
//! StackName, ...). A value may run over several lines (`ResourceProperties` is
//! JSON); a line that does not start a new `Key='` continues the previous value.

/// The fields of a CloudFormation notification, in message order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CfnNotification {
    pub fields: Vec<(String, String)>,
}

impl CfnNotification {
    pub fn parse(message: &str) -> CfnNotification {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in message.lines() {
            match start_of_field(line) {
                Some((key, value)) => fields.push((key.to_owned(), value.to_owned())),
                None => {
                    if let Some((_, value)) = fields.last_mut() {
                        value.push('\n');
                        value.push_str(line);
                    }
                }
            }
        }
        for (_, value) in &mut fields {
            if let Some(inner) = value.strip_suffix('\'') {
                value.truncate(inner.len());
            }
        }
        CfnNotification { fields }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `Key='rest` → (Key, rest), Key alphanumeric starting with a letter.
fn start_of_field(line: &str) -> Option<(&str, &str)> {
    let (key, rest) = line.split_once("='")?;
    let mut chars = key.chars();
    (chars.next()?.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric()))
        .then_some((key, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stack_notification() {
        let message = "StackId='arn:aws:cloudformation:eu-west-1:123456789012:stack/app/0a1b'\n\
            Timestamp='2026-12-03T09:00:00.123Z'\n\
            EventId='Bucket-CREATE_COMPLETE-2026-12-03T09:00:00.123Z'\n\
            LogicalResourceId='Bucket'\n\
            Namespace='123456789012'\n\
            PhysicalResourceId='app-bucket-1'\n\
            ResourceProperties='{\"BucketName\":\"x\",\n  \"Tags\":[{\"Key\":\"a='b'\"}]}\n'\n\
            ResourceStatus='CREATE_COMPLETE'\n\
            ResourceStatusReason=''\n\
            ResourceType='AWS::S3::Bucket'\n\
            StackName='app'\n\
            ClientRequestToken='null'\n";
        let n = CfnNotification::parse(message);
        assert_eq!(
            n.get("StackId"),
            Some("arn:aws:cloudformation:eu-west-1:123456789012:stack/app/0a1b")
        );
        assert_eq!(n.get("StackName"), Some("app"));
        assert_eq!(n.get("ResourceStatus"), Some("CREATE_COMPLETE"));
        assert_eq!(n.get("ResourceStatusReason"), Some(""));
        assert_eq!(n.get("ResourceType"), Some("AWS::S3::Bucket"));
        assert_eq!(
            n.get("ResourceProperties"),
            Some("{\"BucketName\":\"x\",\n  \"Tags\":[{\"Key\":\"a='b'\"}]}\n")
        );
        assert_eq!(n.fields.len(), 12);
        assert_eq!(n.get("Nothing"), None);
    }

    #[test]
    fn other_messages_have_no_stack() {
        for text in ["", "hello", "{\"a\": 1}", "not a='field", "='x'"] {
            assert_eq!(CfnNotification::parse(text).get("StackId"), None, "{text}");
        }
        // Windows line ends and a missing closing quote are tolerated.
        let n = CfnNotification::parse("StackId='a'\r\nStackName='b");
        assert_eq!(n.get("StackId"), Some("a"));
        assert_eq!(n.get("StackName"), Some("b"));
    }
}
