//! placeholder until the stand-ins land
pub async fn run(_s: impl std::future::Future<Output = ()>) -> Result<(), std::io::Error> {
    Ok(())
}
