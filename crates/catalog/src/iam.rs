//! The principal directory, stored whole as one versioned JSON document (small: users, groups,
//! access keys, policies). The server serializes changes; the version check makes a lost update
//! impossible even so.

use rusqlite::{OptionalExtension, params};

use crate::{Catalog, CatalogError};

impl Catalog {
    /// The stored directory document and its version, if one was ever stored.
    pub fn iam_directory(&self) -> Result<Option<(u64, String)>, CatalogError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(
                "SELECT version, body FROM iam_directory WHERE id = 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?;
        Ok(row.map(|(v, b)| (u64::try_from(v).unwrap_or(0), b)))
    }

    /// Stores `body` as the next version after `expected` (0 when none is stored yet); refuses
    /// if another change came first. Returns the new version.
    pub fn put_iam_directory(&self, expected: u64, body: &str) -> Result<u64, CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let found: u64 = tx
            .query_row("SELECT version FROM iam_directory WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(|v| u64::try_from(v).unwrap_or(0))
            .unwrap_or(0);
        if found != expected {
            return Err(CatalogError::Conflict { expected, found });
        }
        let next = expected + 1;
        let next_i = i64::try_from(next).map_err(|_| CatalogError::Corrupt("version".into()))?;
        tx.execute(
            "INSERT INTO iam_directory (id, version, body) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body",
            params![next_i, body],
        )?;
        tx.commit()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fixture_v4_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v4/catalog.db")
    }

    const FIXTURE_V4_BODY: &str = r#"{"format":1,"users":{"alice":{"name":"alice","user_id":"AIDAFIXTURE0000000001","path":"/","created_ms":1767323000000,"access_keys":[{"id":"AKIAFIXTURE000000001","sealed_secret":"AQID","status":"Active","created_ms":1767323000000}],"attached":["arn:aws:iam::aws:policy/OpenTrailReadOnlyAccess"],"inline":{},"groups":["ops"]}},"groups":{"ops":{"name":"ops","group_id":"AGPAFIXTURE0000000001","path":"/","created_ms":1767323000000,"attached":[],"inline":{}}},"policies":{},"root_keys":[]}"#;

    #[test]
    fn versions_guard_against_lost_updates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        assert_eq!(cat.iam_directory().expect("read"), None);
        assert_eq!(cat.put_iam_directory(0, "{\"a\":1}").expect("put"), 1);
        assert_eq!(cat.put_iam_directory(1, "{\"a\":2}").expect("put"), 2);
        assert!(matches!(
            cat.put_iam_directory(1, "{\"a\":3}"),
            Err(CatalogError::Conflict {
                expected: 1,
                found: 2
            })
        ));
        assert_eq!(
            cat.iam_directory().expect("read"),
            Some((2, "{\"a\":2}".to_owned()))
        );
    }

    /// The committed schema-v4 catalog (made by `make_fixture_v4`) still opens and reads back.
    #[test]
    fn fixture_v4_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::copy(fixture_v4_path(), &path).expect("copy fixture");
        let cat = Catalog::open(&path).expect("open v4");
        assert_eq!(
            cat.iam_directory().expect("read"),
            Some((1, FIXTURE_V4_BODY.to_owned()))
        );
    }

    /// A v3 catalog gains the directory table on open.
    #[test]
    fn fixture_v3_upgrades_to_v4() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v3/catalog.db"),
            &path,
        )
        .expect("copy fixture");
        let cat = Catalog::open(&path).expect("open v3");
        assert_eq!(cat.iam_directory().expect("read"), None);
        assert_eq!(cat.put_iam_directory(0, "{}").expect("put"), 1);
    }

    #[test]
    #[ignore = "writes the committed v4 fixture; never rerun for v4"]
    fn make_fixture_v4() {
        let path = fixture_v4_path();
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        let _ = std::fs::remove_file(&path);
        let cat = Catalog::open(&path).expect("open");
        cat.put_iam_directory(0, FIXTURE_V4_BODY).expect("put");
        let conn = cat.conn().expect("conn");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("leave WAL so the file is whole");
    }
}
