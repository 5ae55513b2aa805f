//! The pattern language against every example of Lambda's filtering documentation for
//! DynamoDB, "Using event filtering with a DynamoDB event source"
//! (<https://docs.aws.amazon.com/lambda/latest/dg/with-ddb-filtering.html>: table keys,
//! table attributes, Boolean expressions, the Exists operator, and its note on numbers),
//! the DynamoDB example of "Control which events Lambda sends to your function"
//! (<https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html>,
//! multi-level filtering) and each row of that page's table of comparison operators; then
//! the refusals, each naming the path of what is wrong.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, Record, StreamRecord};
use serde_json::{Value, json};

use super::{FilterCriteria, FilterPattern};

fn matches(pattern: &str, event: &Value) -> bool {
    FilterPattern::parse(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .matches(event)
}

/// The page's sample record: key `CustomerName`, attributes `AccountManager` and
/// `PaymentTerms`.
fn customer_record() -> Value {
    json!({
        "eventID": "1",
        "eventVersion": "1.0",
        "dynamodb": {
            "ApproximateCreationDateTime": "1678831218.0",
            "Keys": {"CustomerName": {"S": "AnyCompany Industries"}},
            "NewImage": {
                "AccountManager": {"S": "Pat Candella"},
                "PaymentTerms": {"S": "60 days"},
                "CustomerName": {"S": "AnyCompany Industries"}
            },
            "SequenceNumber": "111",
            "SizeBytes": 26,
            "StreamViewType": "NEW_IMAGE"
        }
    })
}

fn with_new_manager(record: &Value, manager: &str) -> Value {
    let mut record = record.clone();
    record["dynamodb"]["NewImage"]["AccountManager"]["S"] = json!(manager);
    record
}

#[test]
fn filtering_with_table_keys() {
    let pattern = r#"{ "dynamodb" : { "Keys" : { "CustomerName" : { "S" : [ "AnyCompany Industries" ] } } } }"#;
    let record = customer_record();
    assert!(matches(pattern, &record));
    let mut other = record.clone();
    other["dynamodb"]["Keys"]["CustomerName"]["S"] = json!("Example Corp");
    assert!(!matches(pattern, &other));
}

#[test]
fn filtering_with_table_attributes() {
    let pattern = r#"{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella", "Shirley Rodriguez" ] } } } }"#;
    let record = customer_record();
    assert!(matches(pattern, &record));
    assert!(matches(
        pattern,
        &with_new_manager(&record, "Shirley Rodriguez")
    ));
    assert!(!matches(
        pattern,
        &with_new_manager(&record, "Terry Whitlock")
    ));
}

#[test]
fn filtering_with_boolean_expressions_merges_the_repeated_dynamodb_key() {
    // As the page writes it: "dynamodb" twice, one for each image; both must match.
    let pattern = r#"{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella" ] } } } , "dynamodb" : { "OldImage" : { "AccountManager" : { "S" : [ "Terry Whitlock" ] } } } }"#;
    let mut record = customer_record();
    assert!(!matches(pattern, &record), "no old image");
    record["dynamodb"]["OldImage"] = json!({"AccountManager": {"S": "Terry Whitlock"}});
    assert!(matches(pattern, &record));
    assert!(!matches(
        pattern,
        &with_new_manager(&record, "Shirley Rodriguez")
    ));
    record["dynamodb"]["OldImage"]["AccountManager"]["S"] = json!("Shirley Rodriguez");
    assert!(!matches(pattern, &record));
}

#[test]
fn the_exists_operator_works_on_leaf_nodes_only() {
    let record = json!({"dynamodb": {"NewImage": {
        "UserID": {"S": "12345"},
        "Name": {"S": "John Doe"},
        "Organizations": {"L": [{"S": "Sales"}, {"S": "Marketing"}, {"S": "Support"}]}
    }}});
    // The page: this "would never return a match because Organizations is not a leaf node".
    let intermediate =
        r#"{ "dynamodb" : { "NewImage" : { "Organizations" : [ { "exists": true } ] } } }"#;
    assert!(!matches(intermediate, &record));
    let leaf = r#"{ "dynamodb" : { "NewImage" : {"Organizations": {"L": {"S": [ {"exists": true } ] } } } } }"#;
    assert!(matches(leaf, &record));
    let mut without = record.clone();
    without["dynamodb"]["NewImage"]
        .as_object_mut()
        .unwrap()
        .remove("Organizations");
    assert!(!matches(leaf, &without));
}

#[test]
fn numbers_are_strings_in_the_record_so_numeric_operators_do_not_match_attributes() {
    // The page's note: "DynamoDB event filtering doesn't support the use of numeric
    // operators ... these parameters are converted to strings in the JSON record object."
    let record = json!({"dynamodb": {"NewImage": {"Price": {"N": "15"}}}});
    assert!(!matches(
        r#"{"dynamodb": {"NewImage": {"Price": {"N": [{"numeric": [">", 10]}]}}}}"#,
        &record
    ));
    assert!(matches(
        r#"{"dynamodb": {"NewImage": {"Price": {"N": ["15"]}}}}"#,
        &record
    ));
}

#[test]
fn multi_level_filtering_on_a_numeric_key() {
    let record = json!({"dynamodb": {
        "Keys": {"Id": {"N": "101"}},
        "NewImage": {"Message": {"S": "New item!"}, "Id": {"N": "101"}},
        "SequenceNumber": "111",
        "SizeBytes": 26,
        "StreamViewType": "NEW_AND_OLD_IMAGES"
    }});
    let pattern = r#"{ "dynamodb": { "Keys": { "Id": { "N": [ "101" ] } } } }"#;
    assert!(matches(pattern, &record));
    let mut other = record.clone();
    other["dynamodb"]["Keys"]["Id"]["N"] = json!("102");
    assert!(!matches(pattern, &other));
}

/// Each row of the comparison operators table, on a flat event.
#[test]
fn every_comparison_operator_of_the_syntax_table() {
    let event = json!({
        "UserID": null, "LastName": "", "Name": "Alice", "Location": "New York",
        "Day": "Monday", "PaymentType": "Credit", "Weather": "Sunny", "Price": 100,
        "ProductName": "Widget", "Region": "us-east-1", "FileName": "cat.png",
        "SourceIP": "10.0.0.255"
    });
    let cases = [
        (r#"{"UserID": [null]}"#, true),
        (r#"{"Name": [null]}"#, false),
        (r#"{"LastName": [""]}"#, true),
        (r#"{"Name": [""]}"#, false),
        (r#"{"Name": ["Alice"]}"#, true),
        (r#"{"Name": ["alice"]}"#, false),
        (r#"{"Name": [{"equals-ignore-case": "alice"}]}"#, true),
        (r#"{"Location": ["New York"], "Day": ["Monday"]}"#, true),
        (r#"{"Location": ["New York"], "Day": ["Tuesday"]}"#, false),
        (r#"{"PaymentType": ["Credit", "Debit"]}"#, true),
        (r#"{"PaymentType": ["Debit", "Cash"]}"#, false),
        (
            r#"{"$or": [{"Location": ["Paris"]}, {"Day": ["Monday"]}]}"#,
            true,
        ),
        (
            r#"{"$or": [{"Location": ["Paris"]}, {"Day": ["Sunday"]}]}"#,
            false,
        ),
        (r#"{"Weather": [{"anything-but": ["Raining"]}]}"#, true),
        (
            r#"{"Weather": [{"anything-but": ["Raining", "Sunny"]}]}"#,
            false,
        ),
        (r#"{"Missing": [{"anything-but": ["Raining"]}]}"#, false),
        (r#"{"Price": [{"numeric": ["=", 100]}]}"#, true),
        (r#"{"Price": [{"numeric": [">", 10, "<=", 20]}]}"#, false),
        (r#"{"Price": [{"numeric": [">", 10, "<=", 100]}]}"#, true),
        (r#"{"ProductName": [{"exists": true}]}"#, true),
        (r#"{"ProductName": [{"exists": false}]}"#, false),
        (r#"{"Missing": [{"exists": false}]}"#, true),
        (r#"{"Region": [{"prefix": "us-"}]}"#, true),
        (r#"{"Region": [{"prefix": "eu-"}]}"#, false),
        (
            r#"{"Region": [{"prefix": {"equals-ignore-case": "US-"}}]}"#,
            true,
        ),
        (r#"{"FileName": [{"suffix": ".png"}]}"#, true),
        (
            r#"{"FileName": [{"suffix": {"equals-ignore-case": ".PNG"}}]}"#,
            true,
        ),
        (r#"{"FileName": [{"suffix": ".jpg"}]}"#, false),
        (
            r#"{"FileName": [{"anything-but": {"suffix": ".png"}}]}"#,
            false,
        ),
        (r#"{"Region": [{"anything-but": {"prefix": "eu-"}}]}"#, true),
        (
            r#"{"Name": [{"anything-but": {"equals-ignore-case": ["ALICE", "bob"]}}]}"#,
            false,
        ),
        (r#"{"SourceIP": [{"cidr": "10.0.0.0/24"}]}"#, true),
        (r#"{"SourceIP": [{"cidr": "10.0.1.0/24"}]}"#, false),
        (r#"{"SourceIP": [{"cidr": "2001:db8::/32"}]}"#, false),
    ];
    for (pattern, expected) in cases {
        assert_eq!(matches(pattern, &event), expected, "{pattern}");
    }
    let v6 = json!({"SourceIP": "2001:db8::1"});
    assert!(matches(r#"{"SourceIP": [{"cidr": "2001:db8::/32"}]}"#, &v6));
}

#[test]
fn event_name_and_several_patterns_are_ored() {
    let criteria = FilterCriteria::parse([
        r#"{"eventName": ["REMOVE"]}"#,
        r#"{"dynamodb": {"NewImage": {"status": {"S": [{"prefix": "ship"}]}}}}"#,
    ])
    .unwrap();
    let record = |event: &str, status: &str| json!({"eventName": event, "dynamodb": {"NewImage": {"status": {"S": status}}}});
    assert!(criteria.matches(&record("REMOVE", "new")));
    assert!(criteria.matches(&record("INSERT", "shipped")));
    assert!(!criteria.matches(&record("INSERT", "new")));
}

#[test]
fn an_sdk_record_is_matched_in_lambdas_shape() {
    let record = Record::builder()
        .event_name(OperationType::Modify)
        .dynamodb(
            StreamRecord::builder()
                .set_new_image(Some(HashMap::from([(
                    "tags".to_owned(),
                    AttributeValue::Ss(vec!["a".into(), "vip".into()]),
                )])))
                .build(),
        )
        .build();
    let criteria = FilterCriteria::parse([
        r#"{"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"tags": {"SS": ["vip"]}}}}"#,
    ])
    .unwrap();
    assert!(criteria.matches_record(&record));
    let other = FilterCriteria::parse([r#"{"eventName": ["INSERT"]}"#]).unwrap();
    assert!(!other.matches_record(&record));
}

#[test]
fn invalid_patterns_are_refused_naming_the_path() {
    let cases = [
        ("{", "$", "not valid JSON"),
        ("{}", "$", "empty pattern"),
        (r#"{"dynamodb": "INSERT"}"#, "$.dynamodb", "in an array"),
        (r#"{"eventName": []}"#, "$.eventName", "matches nothing"),
        (
            r#"{"dynamodb": {"Keys": {"id": {"S": [{"prefix": 5}]}}}}"#,
            "$.dynamodb.Keys.id.S[0].prefix",
            "needs a string",
        ),
        (
            r#"{"dynamodb": {"NewImage": {"n": {"N": [{"numeric": ["<", 1, ">", 0]}]}}}}"#,
            "$.dynamodb.NewImage.n.N[0].numeric",
            "lower bound",
        ),
        (
            r#"{"SizeBytes": [{"numeric": [">", 6e9]}]}"#,
            "$.SizeBytes[0].numeric[1]",
            "5.0e9",
        ),
        (
            r#"{"eventName": [{"wildcard": "IN*"}]}"#,
            "$.eventName[0].wildcard",
            "unknown operator",
        ),
        (
            r#"{"eventName": [{"prefix": "A", "suffix": "B"}]}"#,
            "$.eventName[0]",
            "exactly one operator",
        ),
        (r#"{"$or": [{"a": ["1"]}]}"#, "$.$or", "at least two"),
        (
            r#"{"ip": [{"cidr": "10.0.0.0/33"}]}"#,
            "$.ip[0].cidr",
            "not an IP range",
        ),
        (
            r#"{"eventName": ["INSERT"], "eventName": ["REMOVE"]}"#,
            "$.eventName",
            "given twice",
        ),
        (
            r#"{"a b": [{"exists": "yes"}]}"#,
            r#"$["a b"][0].exists"#,
            "true or false",
        ),
    ];
    for (pattern, path, problem) in cases {
        let error = FilterPattern::parse(pattern).expect_err(pattern);
        assert_eq!(error.path, path, "{pattern}: {error}");
        assert!(error.problem.contains(problem), "{pattern}: {error}");
    }
}

#[test]
fn lambdas_limits_are_kept() {
    let long = format!(r#"{{"eventName": ["{}"]}}"#, "x".repeat(4096));
    assert!(
        FilterPattern::parse(&long)
            .unwrap_err()
            .problem
            .contains("4096")
    );
    let too_many = vec![r#"{"eventName": ["INSERT"]}"#; 11];
    assert!(FilterCriteria::parse(too_many).is_err());
    // 4 nested $or of 6 options each: 1,296 combinations.
    let six = (0..6)
        .map(|i| format!(r#"{{"f{i}": ["x"]}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let nested = (0..4)
        .map(|level| format!(r#""l{level}": {{"$or": [{six}]}}"#))
        .collect::<Vec<_>>()
        .join(",");
    let error = FilterPattern::parse(&format!("{{{nested}}}")).unwrap_err();
    assert!(error.problem.contains("1296 combinations"), "{error}");
    let second_bad = FilterCriteria::parse([r#"{"a": ["1"]}"#, r#"{"a": 1}"#]).unwrap_err();
    assert!(
        second_bad.problem.contains("pattern 2 of 2"),
        "{second_bad}"
    );
}
