//! htpasswd files (Apache's format, which nginx's `auth_basic_user_file` reads): `user:hash`
//! lines, with only the hashes `htpasswd` itself calls secure: bcrypt (`-B`) and SHA-256 and
//! SHA-512 crypt (`-2`, `-5`).
//!
//! `htpasswd`'s default (`$apr1$`, MD5), `-s` (unsalted SHA-1), `-d` (DES crypt, 8 characters)
//! and plain text are refused with an error that says how to make a hash that is accepted: a
//! leaked file of those gives its passwords away. Costs are bounded because a check runs for
//! every new login: bcrypt up to cost 14, SHA-crypt up to 1,000,000 rounds.
use std::collections::HashMap;

use sha_crypt::PasswordVerifier as _;

/// The highest bcrypt cost accepted (`htpasswd -C`; its default is 5, each step doubles).
pub const MAX_BCRYPT_COST: u32 = 14;
/// The most SHA-crypt rounds accepted (`htpasswd -r`; the default is 5,000).
pub const MAX_SHA_CRYPT_ROUNDS: u32 = 1_000_000;

/// A user's password hash, known to be well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hash {
    /// `$2a$`, `$2b$`, `$2y$`.
    Bcrypt(String),
    /// `$5$` (SHA-256) and `$6$` (SHA-512), `rounds=` optional.
    ShaCrypt(String),
}

impl Hash {
    /// Whether `password` is the one hashed. Costs what the hash's cost says: run it off the
    /// proxy's workers.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            Hash::ShaCrypt(hash) => {
                sha_crypt::ShaCrypt::default().verify_password(password, hash.as_str()).is_ok()
            }
        }
    }

    /// The hash of `text` if it is one of the accepted kinds, well formed and within the costs.
    fn of(text: &str) -> Result<Hash, Refused> {
        let kind = |k: &'static str| Err(Refused::Weak(k));
        if text.starts_with("$2a$") || text.starts_with("$2b$") || text.starts_with("$2y$") {
            let parts: bcrypt::HashParts = text.parse().map_err(|_| Refused::Malformed("bcrypt"))?;
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(Refused::Costly(format!(
                    "bcrypt cost {} is above {MAX_BCRYPT_COST}",
                    parts.get_cost()
                )));
            }
            return Ok(Hash::Bcrypt(text.to_owned()));
        }
        if text.starts_with("$5$") || text.starts_with("$6$") {
            return sha_crypt_hash(text);
        }
        match text {
            t if t.starts_with("$apr1$") || t.starts_with("$1$") => kind("MD5 (`htpasswd`'s default, `-m`)"),
            t if t.starts_with("{SHA}") => kind("unsalted SHA-1 (`-s`)"),
            t if t.starts_with("{SSHA}") => kind("salted SHA-1"),
            t if t.starts_with('$') => kind("of a kind not known here"),
            t if t.len() == 13 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/') => {
                kind("DES crypt (`-d`)")
            }
            _ => kind("plain text, or of a kind not known here"),
        }
    }
}

/// `$5$[rounds=N$]salt$hash` or `$6$…`: the fields SHA-crypt has, the rounds within bounds.
fn sha_crypt_hash(text: &str) -> Result<Hash, Refused> {
    let malformed = Refused::Malformed("SHA-crypt");
    let fields: Vec<&str> = text.split('$').collect();
    let (rounds, salt, digest) = match fields.as_slice() {
        ["", _, salt, digest] => (None, *salt, *digest),
        ["", _, rounds, salt, digest] => (Some(*rounds), *salt, *digest),
        _ => return Err(malformed),
    };
    if let Some(rounds) = rounds {
        let n: u32 = rounds.strip_prefix("rounds=").and_then(|n| n.parse().ok()).ok_or(malformed.clone())?;
        if n > MAX_SHA_CRYPT_ROUNDS {
            return Err(Refused::Costly(format!("{n} SHA-crypt rounds are above {MAX_SHA_CRYPT_ROUNDS}")));
        }
    }
    let crypt64 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    let digest_len = if text.starts_with("$5$") { 43 } else { 86 };
    if salt.is_empty() || salt.len() > 16 || !crypt64(salt) || digest.len() != digest_len || !crypt64(digest)
    {
        return Err(malformed);
    }
    Ok(Hash::ShaCrypt(text.to_owned()))
}

/// Why a line's hash is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refused {
    Weak(&'static str),
    Malformed(&'static str),
    Costly(String),
}

/// What is wrong with an htpasswd file, by line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("line {line}: no `:` between the user and the hash")]
    NoColon { line: usize },
    #[error("line {line}: the user name is empty")]
    NoUser { line: usize },
    #[error("line {line}: user `{user}` is listed twice")]
    Twice { line: usize, user: String },
    #[error(
        "line {line}: user `{user}`'s hash is {kind}, which is not accepted; make one with `htpasswd -B` \
         (bcrypt), `-2` or `-5` (SHA-crypt)"
    )]
    Weak { line: usize, user: String, kind: &'static str },
    #[error("line {line}: user `{user}`'s hash is not a well-formed {kind} hash")]
    Malformed { line: usize, user: String, kind: &'static str },
    #[error("line {line}: user `{user}`'s {why}: every new login would cost too much")]
    Costly { line: usize, user: String, why: String },
}

/// The users of one file and their hashes.
#[derive(Debug, Default)]
pub struct Users(HashMap<Box<[u8]>, Hash>);

impl Users {
    /// The users of an htpasswd file's text: `user:hash` lines; blank lines and lines starting
    /// with `#` are skipped.
    pub fn parse(text: &str) -> Result<Users, Error> {
        let mut users = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (user, hash) = entry.split_once(':').ok_or(Error::NoColon { line })?;
            if user.is_empty() {
                return Err(Error::NoUser { line });
            }
            let hash = Hash::of(hash).map_err(|refused| match refused {
                Refused::Weak(kind) => Error::Weak { line, user: user.to_owned(), kind },
                Refused::Malformed(kind) => Error::Malformed { line, user: user.to_owned(), kind },
                Refused::Costly(why) => Error::Costly { line, user: user.to_owned(), why },
            })?;
            if users.insert(user.as_bytes().into(), hash).is_some() {
                return Err(Error::Twice { line, user: user.to_owned() });
            }
        }
        Ok(Users(users))
    }

    /// The hash of `user`, if listed.
    pub fn get(&self, user: &[u8]) -> Option<&Hash> {
        self.0.get(user)
    }

    /// A hash of the file's, for a check whose answer is known to be no: an unknown user's
    /// login is checked against it, so it takes as long as a known user's.
    pub fn any(&self) -> Option<&Hash> {
        self.0.values().next()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with Apache's htpasswd 2.4: `-nbB -C 4 ann 'open sesame'`, `-nb2 bob hunter2`,
    // `-nb5 -r 1000 cy 'pässword'`.
    const ANN: &str = "ann:$2y$04$o2bVFVIz.Iqlx6PNV0I.qOGGW6y7kqYhqXMCrf2OkVxyZOmEg/qBa";
    const BOB: &str = "bob:$5$AZf30sOQFjfG2Dd3$M65Ga16cnFYP7iBfK7q6XxwDR85TQ.kuABw5RO1rzG4";
    const CY: &str = "cy:$6$rounds=1000$01mINH4T12fuR/ah$kkVDe8wEac0Z4xoBfCc6Hu63y.UVQWbywN/iL0xjGtqKhs6PWnmJGao5CWUI6oMxVOOyoeAyDJ6EK72ZP2DJb.";

    #[test]
    fn htpasswd_s_secure_hashes_verify() {
        let users = Users::parse(&format!("# team\n{ANN}\n\n  {BOB}  \n{CY}\n")).unwrap();
        assert_eq!(users.len(), 3);
        let check =
            |user: &str, password: &str| users.get(user.as_bytes()).unwrap().verify(password.as_bytes());
        assert!(check("ann", "open sesame"));
        assert!(!check("ann", "open sesame "));
        assert!(check("bob", "hunter2"));
        assert!(!check("bob", "hunter3"));
        assert!(check("cy", "pässword"));
        assert!(!check("cy", "password"));
        assert!(users.get(b"dee").is_none());
    }

    #[test]
    fn weak_and_malformed_hashes_are_refused_by_line() {
        // htpasswd's -m (its default), -s, -d and -p for `dee`/`x`.
        for (hash, kind) in [
            ("$apr1$eIqTXKib$2x6sHaEyNNQrYxnTr0KKA1", "MD5"),
            ("{SHA}EfatjsUqKYSrqv18O1FlA3hcIHI=", "SHA-1"),
            ("hILidQXi4Gkig", "DES"),
            ("x", "plain text"),
        ] {
            let err = Users::parse(&format!("{ANN}\ndee:{hash}\n")).unwrap_err();
            assert!(matches!(&err, Error::Weak { line: 2, user, .. } if user == "dee"), "{err}");
            assert!(err.to_string().contains(kind) && err.to_string().contains("htpasswd -B"), "{err}");
        }
        for hash in ["$2y$04$short", "$5$salt", "$6$rounds=many$salt$x", "$5$salt$toolittle"] {
            let err = Users::parse(&format!("dee:{hash}\n")).unwrap_err();
            assert!(matches!(err, Error::Malformed { line: 1, .. }), "{hash}: {err}");
        }
        assert_eq!(Users::parse("ann\n").unwrap_err(), Error::NoColon { line: 1 });
        assert_eq!(Users::parse("\n:$2y$04$x\n").unwrap_err(), Error::NoUser { line: 2 });
        assert!(matches!(
            Users::parse(&format!("{ANN}\n{ANN}\n")).unwrap_err(),
            Error::Twice { line: 2, .. }
        ));
    }

    #[test]
    fn costs_that_would_stall_every_login_are_refused() {
        let costly = ANN.replace("$04$", "$15$");
        assert!(matches!(Users::parse(&costly).unwrap_err(), Error::Costly { .. }));
        let rounds = CY.replace("rounds=1000", "rounds=1000001");
        assert!(matches!(Users::parse(&rounds).unwrap_err(), Error::Costly { .. }));
        assert!(Users::parse(&ANN.replace("$04$", "$14$")).is_ok());
    }
}
