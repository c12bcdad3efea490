//! Signatures in the Standard Webhooks form: `webhook-signature: v1,<base64 HMAC-SHA256
//! of "{id}.{timestamp}.{body}">`, keyed with the bytes of the subscription's
//! `whsec_…` secret, so any receiver library of that spec verifies faena's calls.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes a secret may hold: the spec's range (24 is what faena generates).
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A fresh secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The key bytes of a `whsec_…` secret, or why it is not one.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(b64) = secret.strip_prefix(SECRET_PREFIX) else {
        return Err(format!(
            "must start with `{SECRET_PREFIX}` followed by base64"
        ));
    };
    let bytes = STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after `{SECRET_PREFIX}` is not base64 ({e})"))?;
    if !SECRET_BYTES.contains(&bytes.len()) {
        return Err(format!(
            "must decode to {} to {} bytes, not {}",
            SECRET_BYTES.start(),
            SECRET_BYTES.end(),
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// The `webhook-signature` value of one call.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specs_own_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_generated_and_checked() {
        let s = new_secret();
        assert_eq!(secret_key(&s).unwrap().len(), 24);
        assert_ne!(s, new_secret());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret_key("whsec_not base64!").is_err());
        assert!(secret_key("whsec_c2hvcnQ=").unwrap_err().contains("not 5"));
    }
}
