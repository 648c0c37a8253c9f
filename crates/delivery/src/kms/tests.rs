use super::*;

const ACCOUNT: &str = "111122223333";
const REGION: &str = "us-east-1";
const NOW: i64 = 1_767_323_000_000;

fn master() -> MasterKey {
    MasterKey::from_hex(&"ab".repeat(32)).expect("key")
}

fn store_with_key() -> (Keystore, String) {
    let mut s = Keystore::default();
    let id = s
        .create_key(&master(), REGION, "test", Vec::new(), NOW)
        .expect("create")
        .id
        .clone();
    (s, id)
}

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn every_form_of_key_reference_resolves_in_its_region() {
    let (mut s, id) = store_with_key();
    s.create_alias("alias/trail-key", REGION, &id, NOW, ACCOUNT)
        .expect("alias");
    let forms = [
        id.clone(),
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}"),
        "alias/trail-key".to_owned(),
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:alias/trail-key"),
    ];
    for f in &forms {
        let r = KeyRef::parse(f).expect("parses");
        assert_eq!(s.resolve(ACCOUNT, REGION, &r).expect(f).id, id, "{f}");
        assert!(
            matches!(
                s.resolve(ACCOUNT, "eu-west-1", &r),
                Err(KmsError::NotFound(_))
            ),
            "{f} is not a key of another region"
        );
    }
    let other_account =
        KeyRef::parse(&format!("arn:aws:kms:{REGION}:999999999999:key/{id}")).expect("parses");
    assert!(matches!(
        s.resolve(ACCOUNT, REGION, &other_account),
        Err(KmsError::NotFound(_))
    ));
    assert!(matches!(
        KeyRef::parse("not-a-key"),
        Err(KmsError::NotFound(_))
    ));
    assert!(matches!(
        KeyRef::parse("arn:aws:kms:us-east-1:111122223333:key/nope"),
        Err(KmsError::InvalidArn(_))
    ));
    assert!(matches!(KeyRef::parse(""), Err(KmsError::Validation(_))));
}

#[test]
fn alias_names_follow_the_rules() {
    assert!(check_alias_name("alias/My_key-1/sub").is_ok());
    for bad in ["key", "alias/", "alias/has space", "alias/ü"] {
        assert!(
            matches!(check_alias_name(bad), Err(KmsError::Validation(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        check_alias_name("alias/aws/cloudtrail"),
        Err(KmsError::InvalidAliasName(_))
    ));
    let long = format!("alias/{}", "a".repeat(251));
    assert!(check_alias_name(&long).is_err());
    let (mut s, id) = store_with_key();
    s.create_alias("alias/a", REGION, &id, NOW, ACCOUNT)
        .expect("alias");
    assert!(matches!(
        s.create_alias("alias/a", REGION, &id, NOW, ACCOUNT),
        Err(KmsError::AlreadyExists(_))
    ));
    // The same name in another region is another alias.
    let other = s
        .create_key(&master(), "eu-west-1", "", Vec::new(), NOW)
        .expect("create")
        .id
        .clone();
    s.create_alias("alias/a", "eu-west-1", &other, NOW, ACCOUNT)
        .expect("alias");
    s.delete_alias("alias/a", REGION, ACCOUNT).expect("delete");
    assert!(matches!(
        s.delete_alias("alias/a", REGION, ACCOUNT),
        Err(KmsError::NotFound(_))
    ));
}

#[test]
fn encryption_round_trips_and_is_bound_to_key_and_context() {
    let (s, id) = store_with_key();
    let key = s.keys.get(&id).expect("key");
    let c = ctx(&[(
        "aws:cloudtrail:arn",
        "arn:aws:cloudtrail:us-east-1:111122223333:trail/t",
    )]);
    let blob = s
        .encrypt(&master(), key, ACCOUNT, b"data key bytes", &c)
        .expect("encrypt");
    assert_eq!(Keystore::blob_key_id(&blob).expect("id"), id);
    let (plain, by) = s.decrypt(&master(), ACCOUNT, &blob, &c).expect("decrypt");
    assert_eq!(plain, b"data key bytes");
    assert_eq!(by.id, id);
    // Another context, a flipped bit, another master key: refused.
    assert!(matches!(
        s.decrypt(&master(), ACCOUNT, &blob, &ctx(&[])),
        Err(KmsError::InvalidCiphertext(_))
    ));
    let mut damaged = blob.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert!(matches!(
        s.decrypt(&master(), ACCOUNT, &damaged, &c),
        Err(KmsError::InvalidCiphertext(_))
    ));
    let other_master = MasterKey::from_hex(&"cd".repeat(32)).expect("key");
    assert!(s.decrypt(&other_master, ACCOUNT, &blob, &c).is_err());
    assert!(matches!(
        s.decrypt(&master(), ACCOUNT, b"short", &c),
        Err(KmsError::InvalidCiphertext(_))
    ));
}

#[test]
fn rotation_keeps_old_material_for_decryption() {
    let (mut s, id) = store_with_key();
    let c = ctx(&[]);
    let old = {
        let key = s.keys.get(&id).expect("key");
        s.encrypt(&master(), key, ACCOUNT, b"before", &c)
            .expect("encrypt")
    };
    // Not due yet; due a year later.
    assert!(!s.tick(&master(), NOW + 364 * DAY_MS).expect("tick"));
    assert!(s.tick(&master(), NOW + 365 * DAY_MS).expect("tick"));
    assert_eq!(s.keys[&id].materials.len(), 2);
    s.rotate(&master(), &id, NOW + 366 * DAY_MS, ACCOUNT)
        .expect("on demand");
    assert_eq!(s.keys[&id].materials.len(), 3);
    let new = {
        let key = s.keys.get(&id).expect("key");
        s.encrypt(&master(), key, ACCOUNT, b"after", &c)
            .expect("encrypt")
    };
    assert_eq!(u16::from_be_bytes([new[17], new[18]]), 2, "newest material");
    assert_eq!(
        s.decrypt(&master(), ACCOUNT, &old, &c).expect("old").0,
        b"before"
    );
    assert_eq!(
        s.decrypt(&master(), ACCOUNT, &new, &c).expect("new").0,
        b"after"
    );
    // Rotation off: never due.
    s.set_rotation(&id, None, ACCOUNT).expect("off");
    assert!(!s.tick(&master(), NOW + 5000 * DAY_MS).expect("tick"));
    assert!(matches!(
        s.set_rotation(&id, Some(30), ACCOUNT),
        Err(KmsError::Validation(_))
    ));
}

#[test]
fn disabled_and_deleted_keys_refuse_to_work() {
    let (mut s, id) = store_with_key();
    let c = ctx(&[]);
    let blob = {
        let key = s.keys.get(&id).expect("key");
        s.encrypt(&master(), key, ACCOUNT, b"x", &c)
            .expect("encrypt")
    };
    s.set_enabled(&id, false, ACCOUNT).expect("disable");
    let key = s.keys.get(&id).expect("key");
    assert!(matches!(
        s.encrypt(&master(), key, ACCOUNT, b"x", &c),
        Err(KmsError::Disabled(_))
    ));
    assert!(matches!(
        s.decrypt(&master(), ACCOUNT, &blob, &c),
        Err(KmsError::Disabled(_))
    ));
    s.set_enabled(&id, true, ACCOUNT).expect("enable");
    assert!(s.decrypt(&master(), ACCOUNT, &blob, &c).is_ok());

    s.create_alias("alias/doomed", REGION, &id, NOW, ACCOUNT)
        .expect("alias");
    assert!(matches!(
        s.schedule_deletion(&id, 6, NOW, ACCOUNT),
        Err(KmsError::Validation(_))
    ));
    let at = s.schedule_deletion(&id, 7, NOW, ACCOUNT).expect("schedule");
    assert_eq!(at, NOW + 7 * DAY_MS);
    assert!(matches!(
        s.decrypt(&master(), ACCOUNT, &blob, &c),
        Err(KmsError::InvalidState(_))
    ));
    assert!(matches!(
        s.set_enabled(&id, true, ACCOUNT),
        Err(KmsError::InvalidState(_))
    ));
    s.cancel_deletion(&id, ACCOUNT).expect("cancel");
    assert_eq!(
        s.keys[&id].state,
        KeyState::Disabled,
        "cancelled keys stay disabled"
    );
    s.schedule_deletion(&id, 7, NOW, ACCOUNT).expect("schedule");
    assert!(!s.tick(&master(), at - 1).expect("tick"));
    assert!(s.tick(&master(), at).expect("tick"));
    assert!(s.keys.is_empty());
    assert!(s.aliases.is_empty(), "a deleted key's aliases go with it");
    assert!(matches!(
        s.decrypt(&master(), ACCOUNT, &blob, &c),
        Err(KmsError::InvalidCiphertext(_))
    ));
}

#[test]
fn format_1_documents_read_back() {
    // The committed catalog fixture's keystore (crates/catalog/tests/fixtures/v5).
    let body = r#"{"format":1,"keys":{"0f4b2c7e-8a51-4d3b-9a0e-3c5d7e9f1a2b":{"id":"0f4b2c7e-8a51-4d3b-9a0e-3c5d7e9f1a2b","region":"us-east-1","description":"fixture","created_ms":1767323000000,"state":"Enabled","deletion_ms":null,"rotation_days":365,"materials":[{"sealed":"AQID","created_ms":1767323000000}],"tags":[{"TagKey":"team","TagValue":"audit"}]}},"aliases":[{"name":"alias/fixture","region":"us-east-1","key_id":"0f4b2c7e-8a51-4d3b-9a0e-3c5d7e9f1a2b","created_ms":1767323000000,"updated_ms":1767323000000}]}"#;
    let s: Keystore = serde_json::from_str(body).expect("format 1 parses");
    assert_eq!(
        serde_json::to_string(&s).expect("json"),
        body,
        "and writes back the same"
    );
    let r = KeyRef::parse("alias/fixture").expect("parses");
    assert_eq!(
        s.resolve(ACCOUNT, REGION, &r)
            .expect("resolves")
            .next_rotation_ms(),
        Some(1_767_323_000_000 + 365 * DAY_MS)
    );
}

#[test]
fn service_changes_are_stored_before_they_are_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Arc::new(Catalog::open(&dir.path().join("c.db")).expect("catalog"));
    let svc = KeyService::open(catalog.clone(), master(), ACCOUNT).expect("open");
    let id = svc
        .change(|s, m| Ok(s.create_key(m, REGION, "", Vec::new(), NOW)?.id.clone()))
        .expect("create");
    // A failed change leaves nothing behind.
    let failed = svc.change(|s, _| {
        s.set_enabled(&id, false, ACCOUNT)?;
        s.delete_alias("alias/missing", REGION, ACCOUNT)
    });
    assert!(matches!(failed, Err(KmsError::NotFound(_))));
    assert_eq!(
        svc.snapshot().expect("snap").keys[&id].state,
        KeyState::Enabled
    );
    let c = ctx(&[("k", "v")]);
    let dk = svc.data_key(REGION, &id, &c).expect("data key");
    assert_eq!(
        dk.key_arn,
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}")
    );
    // Reopened from the catalog, the key still decrypts what it encrypted.
    drop(svc);
    let svc = KeyService::open(catalog, master(), ACCOUNT).expect("reopen");
    let (plain, arn) = svc.decrypt(&dk.blob, &c).expect("decrypt");
    assert_eq!(plain, dk.plaintext);
    assert_eq!(arn, dk.key_arn);
}
