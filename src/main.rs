//! The `matchday` binary: `serve` (default), `migrate`, `openapi`, `loadgen`.

use std::process::ExitCode;

use matchday::config::Settings;
use matchday::startup::Application;
use matchday::{db, loadgen, memory, telemetry};

const USAGE: &str = "usage: matchday [serve | migrate | openapi | help
                 | loadgen orders|ws|ws-baseline|http|http-baseline|drop [options]]

  serve     run the exchange (default)
  migrate   apply database migrations and exit
  openapi   print the OpenAPI 3.1 document (as served at /api/v1/openapi.json)
  loadgen   drive load against a running server (see `matchday loadgen help`)

Configuration: config/default.toml, then the file named by MATCHDAY_CONFIG,
then MATCHDAY__SECTION__KEY environment variables.";

#[actix_web::main]
async fn main() -> ExitCode {
    memory::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("serve");
    if matches!(command, "help" | "--help" | "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if command == "loadgen" {
        return loadgen::main(&args[1..]).await;
    }
    if command == "openapi" {
        println!("{:#}", matchday::http::openapi::document());
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("matchday: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.telemetry);
    let result = match command {
        "serve" => serve(settings).await,
        "migrate" => migrate(settings).await,
        other => {
            eprintln!("matchday: unknown command {other:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "matchday failed");
            eprintln!("matchday: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let app = Application::build(settings).await?;
    app.run_until_stopped().await?;
    Ok(())
}

async fn migrate(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let pool = db::pool(&settings.database)?;
    let applied = db::migrate(&pool).await?;
    println!("applied {} migration(s): {:?}", applied.len(), applied);
    Ok(())
}
