//! JWK Sets (RFC 7517): the signing keys an identity provider publishes (Keycloak, Auth0, Okta,
//! Entra ID, Dex: `/.well-known/jwks.json` or the `jwks_uri` of its OpenID configuration), as
//! a route's `jwt` verifies tokens with them: a token's key is the one its header's `kid`
//! names, else any key of the route's algorithm.
//!
//! Only keys lbd verifies with are kept: RSA for RS256/384/512 and PS256/384/512, EC P-256 for
//! ES256 and P-384 for ES384, Ed25519 for EdDSA, octet keys for HS256/384/512; a key whose
//! `alg` names one algorithm is used for that one alone, and one whose `use` is encryption
//! (`enc`) or whose `alg` is no signature's (RSA-OAEP) not at all. Others (X25519, P-521) are
//! skipped, so a provider that publishes them beside its signing keys is served; a set with no
//! key lbd can use is refused.
use std::collections::HashSet;

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

/// The most keys a set may hold: providers publish a handful (the current key, the next, the
/// last); a token without a `kid` is tried against every key of its algorithm.
pub const MAX_KEYS: usize = 64;

/// The most keys a token without a `kid` is checked against: each check is a signature's
/// verification (tens of µs for RSA), so a client's kid-less tokens must not cost a set's
/// every key. Providers name the key in every token; a set is two or three keys while they
/// rotate.
pub const TRIED_WITHOUT_KID: usize = 4;

/// A JWK Set's usable keys.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

struct Key {
    kid: Option<String>,
    /// The algorithms it verifies: its kind's, or the one its `alg` names.
    algorithms: &'static [Algorithm],
    key: DecodingKey,
}

impl KeySet {
    /// The set in `text` (JSON, `{"keys": [...]}`), or what is wrong with it.
    pub fn parse(text: &str) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWK Set: {e}"))?;
        if set.keys.len() > MAX_KEYS {
            return Err(format!("{} keys; at most {MAX_KEYS}", set.keys.len()));
        }
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithms = verifies(jwk);
            if algorithms.is_empty() {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                format!("key {}: {e}", jwk.common.key_id.as_deref().unwrap_or("without a kid"))
            })?;
            keys.push(Key { kid: jwk.common.key_id.clone(), algorithms, key });
        }
        let mut kids = HashSet::new();
        if let Some(twice) = keys.iter().filter_map(|k| k.kid.as_deref()).find(|kid| !kids.insert(*kid)) {
            return Err(format!("two keys have the kid `{twice}`"));
        }
        if keys.is_empty() {
            return Err("no signing key of RSA, EC P-256 or P-384, Ed25519 or a secret".into());
        }
        Ok(KeySet { keys })
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys of `algorithm` it holds.
    pub fn count(&self, algorithm: Algorithm) -> usize {
        self.keys.iter().filter(|k| k.algorithms.contains(&algorithm)).count()
    }

    /// The keys a token of `algorithm` may have been signed with: the one its `kid` names, or
    /// the set's first `TRIED_WITHOUT_KID` keys of the algorithm when it names none.
    pub fn candidates(&self, algorithm: Algorithm, kid: Option<&str>) -> impl Iterator<Item = &DecodingKey> {
        self.keys
            .iter()
            .filter(move |k| {
                k.algorithms.contains(&algorithm) && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
            })
            .take(if kid.is_some() { 1 } else { TRIED_WITHOUT_KID })
            .map(|k| &k.key)
    }
}

/// The algorithms lbd verifies with `jwk`: those of its kind, or the one of them its `alg`
/// names; none for an encryption key, an `alg` of another kind, or a kind lbd does not verify
/// with.
fn verifies(jwk: &Jwk) -> &'static [Algorithm] {
    use Algorithm as A;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return &[];
    }
    let kind: &'static [Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512],
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => &[A::ES256],
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => &[A::ES384],
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => &[A::EdDSA],
        AlgorithmParameters::OctetKey(_) => &[A::HS256, A::HS384, A::HS512],
        _ => return &[],
    };
    let Some(named) = jwk.common.key_algorithm else { return kind };
    let named = match named {
        KeyAlgorithm::HS256 => A::HS256,
        KeyAlgorithm::HS384 => A::HS384,
        KeyAlgorithm::HS512 => A::HS512,
        KeyAlgorithm::RS256 => A::RS256,
        KeyAlgorithm::RS384 => A::RS384,
        KeyAlgorithm::RS512 => A::RS512,
        KeyAlgorithm::PS256 => A::PS256,
        KeyAlgorithm::PS384 => A::PS384,
        KeyAlgorithm::PS512 => A::PS512,
        KeyAlgorithm::ES256 => A::ES256,
        KeyAlgorithm::ES384 => A::ES384,
        KeyAlgorithm::EdDSA => A::EdDSA,
        _ => return &[],
    };
    kind.iter().position(|a| *a == named).map_or(&[], |at| &kind[at..=at])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The modulus of a 2048-bit RSA key made for these tests (`openssl genrsa`).
    const RSA_N: &str = "vwFuxAKMwrdQptxyg48bEzEGPyE_nZKnrSdDDeaGpOZuI5TVP9JZqbTw4i2wJhMJBRFWb4NX_Im6JaqdM7Y6n6kskyGOGesGnr90K1UE1oDjiS1k04vYtra7sPFlvBRAG1uHvx1ZpCvXqaqF7kaxaZeumF_tXouBHAIzQcbBCfWGPep0cZjLpfD8O2Diyu8T5lNsV6q8mgSegEF_FsSSJvfzRERxIv5rFrcRj1bKhMW8GwN3iBIjyfJN0ojwRwlUswlbgpAAJoYT5-mINy50qyKxTghsSnlvl8bCdd3r6kY0nNueFWAi-Xn12Qpd7XtjrjhiC4a3bmjHWz8ZolId0Q";

    fn rsa(kid: &str, extra: &str) -> String {
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{RSA_N}","e":"AQAB"{extra}}}"#)
    }

    fn set(keys: &[String]) -> String {
        format!(r#"{{"keys":[{}]}}"#, keys.join(","))
    }

    #[test]
    fn a_tokens_kid_picks_its_key_and_no_kid_tries_every_key_of_its_algorithm() {
        let ec = r#"{"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let keys =
            KeySet::parse(&set(&[rsa("r1", ""), rsa("r2", r#","alg":"RS256","use":"sig""#), ec.into()]))
                .unwrap();
        assert_eq!((keys.count(Algorithm::RS256), keys.count(Algorithm::ES256)), (2, 1));
        assert_eq!(keys.candidates(Algorithm::RS256, Some("r2")).count(), 1);
        assert_eq!(keys.candidates(Algorithm::RS256, Some("e1")).count(), 0, "a key of another algorithm");
        assert_eq!(keys.candidates(Algorithm::RS256, Some("gone")).count(), 0);
        assert_eq!(keys.candidates(Algorithm::RS256, None).count(), 2);
        assert_eq!(keys.candidates(Algorithm::HS256, None).count(), 0);
        let many: Vec<String> = (0..10).map(|i| rsa(&format!("r{i}"), "")).collect();
        let many = KeySet::parse(&set(&many)).unwrap();
        assert_eq!(
            many.candidates(Algorithm::RS256, None).count(),
            TRIED_WITHOUT_KID,
            "a kid-less token's cost is bounded"
        );
        assert_eq!(many.candidates(Algorithm::RS256, Some("r9")).count(), 1);
    }

    #[test]
    fn keys_lbd_does_not_verify_with_are_skipped_and_a_set_of_none_refused() {
        let skipped = [
            rsa("enc", r#","use":"enc""#),
            rsa("oaep", r#","alg":"RSA-OAEP""#),
            rsa("es", r#","alg":"ES256""#),
            r#"{"kty":"OKP","kid":"x","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#
                .into(),
            r#"{"kty":"EC","kid":"p521","crv":"P-521","x":"AA","y":"AA"}"#.into(),
        ];
        let mut all = skipped.to_vec();
        all.push(rsa("sig", ""));
        assert_eq!(KeySet::parse(&set(&all)).unwrap().count(Algorithm::RS256), 1);
        assert_eq!(
            KeySet::parse(&set(&skipped)).err().unwrap(),
            "no signing key of RSA, EC P-256 or P-384, Ed25519 or a secret"
        );
        assert!(KeySet::parse("{}").err().unwrap().starts_with("not a JWK Set"));
        assert!(KeySet::parse("[1]").err().unwrap().starts_with("not a JWK Set"));
        let twice = KeySet::parse(&set(&[rsa("a", ""), rsa("a", "")])).err().unwrap();
        assert_eq!(twice, "two keys have the kid `a`");
        let many = KeySet::parse(&set(&vec![rsa("x", ""); MAX_KEYS + 1])).err().unwrap();
        assert_eq!(many, "65 keys; at most 64");
        let broken = KeySet::parse(&set(&[r#"{"kty":"RSA","kid":"b","n":"!!","e":"AQAB"}"#.into()])).err();
        assert!(broken.unwrap().starts_with("key b: "));
    }

    /// A P-384 public key made now, as a JWK named `kid`.
    fn p384(kid: &str) -> String {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let point = key.public_key_raw(); // 0x04, then x and y
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        format!(
            r#"{{"kty":"EC","crv":"P-384","kid":"{kid}","x":"{}","y":"{}"}}"#,
            b64(&point[1..49]),
            b64(&point[49..])
        )
    }

    #[test]
    fn each_kind_of_key_verifies_its_algorithms_or_the_one_its_alg_names() {
        use Algorithm as A;
        let ed =
            r#"{"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let oct = r#"{"kty":"oct","kid":"h","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}"#;
        let keys = [rsa("any", ""), rsa("ps", r#","alg":"PS384""#), p384("p384"), ed.into(), oct.into()];
        let keys = KeySet::parse(&set(&keys)).unwrap();
        let kids = |algorithm| -> Vec<&str> {
            keys.keys
                .iter()
                .filter(|k| k.algorithms.contains(&algorithm))
                .filter_map(|k| k.kid.as_deref())
                .collect()
        };
        for algorithm in [A::RS256, A::RS384, A::RS512, A::PS256, A::PS512] {
            assert_eq!(kids(algorithm), ["any"], "{algorithm:?}");
        }
        assert_eq!(kids(A::PS384), ["any", "ps"]);
        assert_eq!(kids(A::ES384), ["p384"]);
        assert_eq!(kids(A::ES256), Vec::<&str>::new());
        assert_eq!(kids(A::EdDSA), ["ed"]);
        assert_eq!(kids(A::HS512), ["h"]);
        assert_eq!(keys.candidates(A::PS384, Some("ps")).count(), 1);
        assert_eq!(keys.candidates(A::RS256, Some("ps")).count(), 0, "its alg names another");
    }
}
