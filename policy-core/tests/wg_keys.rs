//! Key compatibility with the real wg(8) (Debian's wireguard-tools): our public keys are what
//! `wg pubkey` derives, for our private keys and for `wg genkey`'s.

use std::io::Write;
use std::process::{Command, Stdio};

use policy_core::wg::keys::{generate_private, generate_psk, public_of, Key};

fn wg(args: &[&str], input: &str) -> String {
    let mut c = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wg(8) from wireguard-tools must be installed (scripts/install-deps.sh)");
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "wg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn our_public_keys_match_wg_pubkey_for_100_keys() {
    for _ in 0..100 {
        let private = generate_private().unwrap();
        let ours = public_of(&private).to_base64();
        assert_eq!(ours, wg(&["pubkey"], &format!("{}\n", private.to_base64())));
    }
}

#[test]
fn wg_genkey_keys_give_the_same_public_key_here() {
    for _ in 0..20 {
        let text = wg(&["genkey"], "");
        let private = Key::from_base64("private key", &text).unwrap();
        // wg genkey writes clamped keys, like ours.
        assert_eq!(policy_core::wg::keys::clamp(*private.as_bytes()), *private.as_bytes());
        assert_eq!(public_of(&private).to_base64(), wg(&["pubkey"], &format!("{text}\n")));
    }
}

#[test]
fn unclamped_private_keys_are_clamped_like_wg_pubkey_does() {
    // wg pubkey clamps whatever it is given; so does public_of.
    for _ in 0..20 {
        let raw = generate_psk().unwrap();
        assert_eq!(public_of(&raw).to_base64(), wg(&["pubkey"], &format!("{}\n", raw.to_base64())));
    }
}
