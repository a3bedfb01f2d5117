#![forbid(unsafe_code)]
shim::pppd_plugin!(crate::init);
fn init(r: &mut shim::Registrar) -> Result<(), String> {
    r.on_ip_up(|| shim::log(shim::Level::Info, "up"));
    Ok(())
}
