use proptest::prelude::*;

use super::*;

fn fs(field: &str) -> FieldSelector {
    FieldSelector {
        field: field.into(),
        ..FieldSelector::default()
    }
}

fn eq(field: &str, values: &[&str]) -> FieldSelector {
    FieldSelector {
        equals: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        ..fs(field)
    }
}

fn mgmt(source: &str, read_only: bool) -> MatchView {
    MatchView {
        category: "Management".into(),
        event_source: Some(source.into()),
        event_name: Some("Op".into()),
        read_only: Some(read_only),
        ..MatchView::default()
    }
}

fn data(rtype: &str, arn: &str, read_only: bool) -> MatchView {
    MatchView {
        category: "Data".into(),
        event_source: Some("s3.amazonaws.com".into()),
        event_name: Some("GetObject".into()),
        read_only: Some(read_only),
        resources: vec![(Some(rtype.into()), Some(arn.into()))],
        ..MatchView::default()
    }
}

#[test]
fn default_selectors_log_management_events_only() {
    let d = Selectors::Basic(EventSelector::default_selectors());
    assert!(matches(&d, &mgmt("ec2.amazonaws.com", true)));
    assert!(matches(&d, &mgmt("kms.amazonaws.com", false)));
    assert!(!matches(
        &d,
        &data("AWS::S3::Object", "arn:aws:s3:::b/k", true)
    ));
    assert!(validate_basic(&EventSelector::default_selectors()).is_ok());
}

#[test]
fn basic_read_write_exclusions_and_data_resources() {
    let s = Selectors::Basic(vec![EventSelector {
        read_write_type: Some("WriteOnly".into()),
        include_management_events: Some(true),
        data_resources: Some(vec![
            DataResource {
                r#type: Some("AWS::S3::Object".into()),
                values: Some(vec!["arn:aws:s3:::logs/".into()]),
            },
            DataResource {
                r#type: Some("AWS::Lambda::Function".into()),
                values: Some(vec![
                    "arn:aws:lambda:us-east-1:111122223333:function:f".into(),
                ]),
            },
        ]),
        exclude_management_event_sources: Some(vec!["kms.amazonaws.com".into()]),
    }]);
    assert!(matches(&s, &mgmt("ec2.amazonaws.com", false)));
    assert!(
        !matches(&s, &mgmt("ec2.amazonaws.com", true)),
        "WriteOnly drops reads"
    );
    assert!(
        !matches(&s, &mgmt("kms.amazonaws.com", false)),
        "kms excluded"
    );
    assert!(matches(
        &s,
        &data("AWS::S3::Object", "arn:aws:s3:::logs/2026/x", false)
    ));
    assert!(!matches(
        &s,
        &data("AWS::S3::Object", "arn:aws:s3:::other/x", false)
    ));
    assert!(matches(
        &s,
        &data(
            "AWS::Lambda::Function",
            "arn:aws:lambda:us-east-1:111122223333:function:f",
            false
        )
    ));
    assert!(
        !matches(
            &s,
            &data(
                "AWS::Lambda::Function",
                "arn:aws:lambda:us-east-1:111122223333:function:f2",
                false
            )
        ),
        "lambda values are exact"
    );
    let all_s3 = Selectors::Basic(vec![EventSelector {
        read_write_type: None,
        include_management_events: Some(false),
        data_resources: Some(vec![DataResource {
            r#type: Some("AWS::S3::Object".into()),
            values: Some(vec!["arn:aws:s3".into()]),
        }]),
        exclude_management_event_sources: None,
    }]);
    assert!(matches(
        &all_s3,
        &data("AWS::S3::Object", "arn:aws:s3:::any/thing", true)
    ));
    assert!(
        !matches(&all_s3, &mgmt("ec2.amazonaws.com", true)),
        "management events off"
    );
}

#[test]
fn advanced_operators() {
    let sel = |f: FieldSelector| {
        Selectors::Advanced(vec![AdvancedEventSelector {
            name: None,
            field_selectors: vec![eq("eventCategory", &["Data"]), f],
        }])
    };
    let v = data(
        "AWS::S3::Object",
        "arn:aws:s3:::bucket/prefix/key.txt",
        true,
    );
    let cases: Vec<(FieldSelector, bool)> = vec![
        (
            eq("resources.ARN", &["arn:aws:s3:::bucket/prefix/key.txt"]),
            true,
        ),
        (
            FieldSelector {
                starts_with: Some(vec!["arn:aws:s3:::bucket/".into()]),
                ..fs("resources.ARN")
            },
            true,
        ),
        (
            FieldSelector {
                ends_with: Some(vec![".txt".into()]),
                ..fs("resources.ARN")
            },
            true,
        ),
        (
            FieldSelector {
                not_equals: Some(vec!["GetObject".into()]),
                ..fs("eventName")
            },
            false,
        ),
        (
            FieldSelector {
                not_starts_with: Some(vec!["arn:aws:s3:::bucket/".into()]),
                ..fs("resources.ARN")
            },
            false,
        ),
        (
            FieldSelector {
                not_ends_with: Some(vec![".csv".into()]),
                ..fs("resources.ARN")
            },
            true,
        ),
        (eq("readOnly", &["false"]), false),
        // A field the record lacks: positive conditions fail, negative ones hold.
        (eq("vpcEndpointId", &["vpce-1"]), false),
        (
            FieldSelector {
                not_equals: Some(vec!["vpce-1".into()]),
                ..fs("vpcEndpointId")
            },
            true,
        ),
    ];
    for (f, expected) in cases {
        assert_eq!(matches(&sel(f.clone()), &v), expected, "{f:?}");
    }
    let mgmt_no_kms = Selectors::Advanced(vec![AdvancedEventSelector {
        name: Some("mgmt".into()),
        field_selectors: vec![
            eq("eventCategory", &["Management"]),
            FieldSelector {
                not_equals: Some(vec!["kms.amazonaws.com".into()]),
                ..fs("eventSource")
            },
        ],
    }]);
    assert!(matches(&mgmt_no_kms, &mgmt("ec2.amazonaws.com", true)));
    assert!(!matches(&mgmt_no_kms, &mgmt("kms.amazonaws.com", true)));
    assert!(!matches(
        &mgmt_no_kms,
        &data("AWS::S3::Object", "arn:aws:s3:::b/k", true)
    ));
    assert!(logs_management(&mgmt_no_kms, true));
}

#[test]
fn basic_validation_rules() {
    let ok = EventSelector::default_selectors().remove(0);
    assert!(validate_basic(&[]).is_err());
    assert!(validate_basic(&vec![ok.clone(); 6]).is_err());
    let bad_rw = EventSelector {
        read_write_type: Some("read-only".into()),
        ..ok.clone()
    };
    assert!(
        validate_basic(&[bad_rw])
            .expect_err("rw")
            .contains("ReadWriteType")
    );
    let bad_src = EventSelector {
        exclude_management_event_sources: Some(vec!["ec2.amazonaws.com".into()]),
        ..ok.clone()
    };
    assert!(validate_basic(&[bad_src]).is_err());
    let dr = |t: &str, vals: Vec<String>| EventSelector {
        data_resources: Some(vec![DataResource {
            r#type: Some(t.into()),
            values: Some(vals),
        }]),
        ..ok.clone()
    };
    assert!(validate_basic(&[dr("AWS::SNS::Topic", vec!["arn:aws:sns".into()])]).is_err());
    assert!(validate_basic(&[dr("AWS::S3::Object", vec!["arn:aws:lambda".into()])]).is_err());
    assert!(validate_basic(&[dr("AWS::S3::Object", vec![])]).is_err());
    let many: Vec<String> = (0..251).map(|i| format!("arn:aws:s3:::b{i}/")).collect();
    assert!(
        validate_basic(&[dr("AWS::S3::Object", many)])
            .expect_err("count")
            .contains("250")
    );
    let fine: Vec<String> = (0..250)
        .map(|i| format!("arn:aws:s3:::b{i}/"))
        .chain(["arn:aws:s3".to_owned()])
        .collect();
    assert!(
        validate_basic(&[dr("AWS::S3::Object", fine)]).is_ok(),
        "the all-buckets prefix does not count"
    );
}

#[test]
fn advanced_validation_rules() {
    let sel = |fss: Vec<FieldSelector>| {
        vec![AdvancedEventSelector {
            name: None,
            field_selectors: fss,
        }]
    };
    assert!(validate_advanced(&[]).is_err());
    assert!(validate_advanced(&sel(vec![])).is_err());
    assert!(validate_advanced(&sel(vec![eq("eventCategory", &["Management"])])).is_ok());
    assert!(
        validate_advanced(&sel(vec![eq("eventName", &["X"])]))
            .expect_err("no category")
            .contains("eventCategory")
    );
    assert!(validate_advanced(&sel(vec![eq("eventCategory", &["Insight"])])).is_err());
    let starts = FieldSelector {
        starts_with: Some(vec!["Man".into()]),
        ..fs("eventCategory")
    };
    assert!(validate_advanced(&sel(vec![starts])).is_err());
    assert!(
        validate_advanced(&sel(vec![eq("eventCategory", &["Data"])]))
            .expect_err("type")
            .contains("resources.type")
    );
    assert!(
        validate_advanced(&sel(vec![
            eq("eventCategory", &["Data"]),
            eq("resources.type", &["AWS::S3::Object"])
        ]))
        .is_ok()
    );
    assert!(
        validate_advanced(&sel(vec![
            eq("eventCategory", &["Management"]),
            eq("bogus", &["x"])
        ]))
        .is_err()
    );
    assert!(
        validate_advanced(&sel(vec![
            eq("eventCategory", &["Management"]),
            eq("readOnly", &["yes"])
        ]))
        .is_err()
    );
    assert!(
        validate_advanced(&sel(vec![
            eq("eventCategory", &["Management"]),
            fs("eventName")
        ]))
        .is_err(),
        "no condition"
    );
    assert!(
        validate_advanced(&sel(vec![
            eq("eventCategory", &["Management"]),
            eq("eventName", &[])
        ]))
        .is_err(),
        "empty list"
    );
    let many: Vec<String> = (0..500).map(|i| format!("n{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(
        validate_advanced(&sel(vec![
            eq("eventCategory", &["Management"]),
            eq("eventName", &refs)
        ]))
        .expect_err("quota")
        .contains("500")
    );
}

/// The same intent written as basic selectors and as advanced selectors.
fn as_advanced(s: &EventSelector) -> Vec<AdvancedEventSelector> {
    let rw = match s.read_write_type.as_deref() {
        Some("ReadOnly") => Some(eq("readOnly", &["true"])),
        Some("WriteOnly") => Some(eq("readOnly", &["false"])),
        _ => None,
    };
    let mut out = Vec::new();
    if s.include_management_events.unwrap_or(true) {
        let mut fss = vec![eq("eventCategory", &["Management"])];
        fss.extend(rw.clone());
        let excluded = s
            .exclude_management_event_sources
            .clone()
            .unwrap_or_default();
        if !excluded.is_empty() {
            fss.push(FieldSelector {
                not_equals: Some(excluded),
                ..fs("eventSource")
            });
        }
        out.push(AdvancedEventSelector {
            name: None,
            field_selectors: fss,
        });
    }
    for dr in s.data_resources.iter().flatten() {
        let mut fss = vec![
            eq("eventCategory", &["Data"]),
            eq("resources.type", &["AWS::S3::Object"]),
        ];
        fss.extend(rw.clone());
        fss.push(FieldSelector {
            starts_with: dr.values.clone(),
            ..fs("resources.ARN")
        });
        out.push(AdvancedEventSelector {
            name: None,
            field_selectors: fss,
        });
    }
    out
}

fn basic_strategy() -> impl Strategy<Value = EventSelector> {
    let rw = prop::option::of(prop::sample::select(vec!["ReadOnly", "WriteOnly", "All"]));
    let sources = prop::sample::subsequence(EXCLUDABLE_SOURCES.to_vec(), 0..=2);
    let buckets = prop::collection::vec(
        prop::sample::select(vec![
            "arn:aws:s3:::a/",
            "arn:aws:s3:::b/x",
            "arn:aws:s3:::ab",
        ]),
        0..3,
    );
    (rw, any::<bool>(), sources, buckets).prop_map(|(rw, include, sources, buckets)| {
        EventSelector {
            read_write_type: rw.map(str::to_owned),
            include_management_events: Some(include),
            data_resources: Some(if buckets.is_empty() {
                Vec::new()
            } else {
                vec![DataResource {
                    r#type: Some("AWS::S3::Object".into()),
                    values: Some(buckets.into_iter().map(str::to_owned).collect()),
                }]
            }),
            exclude_management_event_sources: Some(
                sources.into_iter().map(str::to_owned).collect(),
            ),
        }
    })
}

fn view_strategy() -> impl Strategy<Value = MatchView> {
    let source = prop::sample::select(vec![
        "ec2.amazonaws.com",
        "kms.amazonaws.com",
        "rdsdata.amazonaws.com",
        "s3.amazonaws.com",
    ]);
    let key = prop::sample::select(vec![
        "arn:aws:s3:::a/1",
        "arn:aws:s3:::b/x/y",
        "arn:aws:s3:::abc/z",
        "arn:aws:s3:::b/z",
    ]);
    (any::<bool>(), source, any::<bool>(), key).prop_map(|(is_data, source, ro, key)| {
        if is_data {
            data("AWS::S3::Object", key, ro)
        } else {
            mgmt(source, ro)
        }
    })
}

proptest! {
    /// Basic selectors and their advanced rendering select exactly the same events.
    #[test]
    fn basic_and_advanced_agree(selectors in prop::collection::vec(basic_strategy(), 1..4), views in prop::collection::vec(view_strategy(), 1..20)) {
        let basic = Selectors::Basic(selectors.clone());
        let advanced_list: Vec<AdvancedEventSelector> = selectors.iter().flat_map(as_advanced).collect();
        let advanced = Selectors::Advanced(advanced_list);
        for v in &views {
            prop_assert_eq!(matches(&basic, v), matches(&advanced, v), "{:?}", v);
        }
    }

    /// For a single-valued field, NotEquals selects exactly what Equals does not.
    #[test]
    fn not_equals_is_the_complement(name in "[A-C]{1,2}", listed in prop::collection::vec("[A-C]{1,2}", 1..4)) {
        let with = |f: FieldSelector| Selectors::Advanced(vec![AdvancedEventSelector { name: None, field_selectors: vec![eq("eventCategory", &["Management"]), f] }]);
        let mut v = mgmt("ec2.amazonaws.com", true);
        v.event_name = Some(name);
        let e = with(FieldSelector { equals: Some(listed.clone()), ..fs("eventName") });
        let ne = with(FieldSelector { not_equals: Some(listed), ..fs("eventName") });
        prop_assert_ne!(matches(&e, &v), matches(&ne, &v));
    }
}
