#![no_main]

// The body is shared with the corpus replay in policy-core/tests/fuzz_corpus.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| policy_core::fuzz::config(data));
