//! Counting the resources of a template body, for the progress total.
//!
//! `GetTemplateSummary` lists resource *types*, which undercounts a template with
//! several resources of one type; the template itself (`GetTemplate`, processed stage
//! so transforms are expanded) says exactly how many resources there are. JSON
//! templates are parsed; YAML templates are read by indentation (the keys one level
//! under a top-level `Resources:`), which avoids a YAML parser for one number.
//! `None` when the body cannot be read that way; the caller then falls back.

/// Number of entries under the template's top-level `Resources`.
pub fn count_resources(body: &str) -> Option<usize> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed).ok()?;
        return v.get("Resources")?.as_object().map(|m| m.len());
    }
    count_yaml(body)
}

fn count_yaml(body: &str) -> Option<usize> {
    let mut lines = body.lines();
    // The top-level `Resources:` line (a block mapping follows).
    loop {
        let line = lines.next()?;
        if let Some(rest) = line.strip_prefix("Resources:") {
            let rest = rest.trim();
            if rest.is_empty() || rest.starts_with('#') {
                break;
            }
            // Flow style (`Resources: {...}`) is not read here.
            return None;
        }
    }
    let mut indent: Option<usize> = None;
    let mut count = 0;
    for line in lines {
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let n = line.len() - content.len();
        if n == 0 {
            break; // the next top-level section
        }
        let level = *indent.get_or_insert(n);
        if n == level && is_key(content) {
            count += 1;
        }
    }
    Some(count)
}

/// `Name:` or `Name: value` (a mapping key), not a list item or a scalar line.
fn is_key(content: &str) -> bool {
    if content.starts_with('-') {
        return false;
    }
    match content.split_once(':') {
        Some((k, rest)) => !k.is_empty() && (rest.is_empty() || rest.starts_with(' ')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_templates() {
        let t = r#"{"Resources": {"A": {"Type": "AWS::S3::Bucket"}, "B": {"Type": "AWS::S3::Bucket"}}}"#;
        assert_eq!(count_resources(t), Some(2));
        assert_eq!(count_resources(r#"{"Outputs": {}}"#), None);
        assert_eq!(count_resources("{not json"), None);
    }

    #[test]
    fn yaml_templates() {
        let t = "AWSTemplateFormatVersion: '2010-09-09'
Parameters:
  Env:
    Type: String
Resources:
  # comment
  BucketA:
    Type: AWS::S3::Bucket
    Properties:
      Tags:
        - Key: a
          Value: b

  BucketB:
    Type: AWS::S3::Bucket
  'Queue':
    Type: AWS::SQS::Queue
Outputs:
  Name:
    Value: !Ref BucketA
";
        assert_eq!(count_resources(t), Some(3));
        assert_eq!(count_resources("Resources: {A: {Type: X}}"), None);
        assert_eq!(count_resources("Outputs:\n  A: 1\n"), None);
    }
}
