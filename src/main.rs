//! The binary: parse the command line, build the config, run, and map the
//! outcome to an exit code, all in one place.

use semaphore_agent::cli::{Cli, Command};
use semaphore_agent::config;
use semaphore_agent::job::JobOptions;
use semaphore_agent::listener;
use semaphore_agent::local::{self, LocalRun};

/// Exit code for a configuration the agent cannot run with.
const EXIT_BAD_CONFIG: i32 = 2;

fn main() {
    let cli = Cli::from_env();
    let code = match cli.cmd {
        Command::Version(_) => {
            println!("{}", semaphore_agent::VERSION);
            0
        }
        Command::Run(args) => {
            init_stderr_logging();
            match config::load_run_config(&args) {
                Ok(run) => local::run(LocalRun {
                    job_file: run.job_file,
                    json: run.json,
                    options: JobOptions {
                        home: home_dir(),
                        tmp_dir: std::env::temp_dir(),
                        env_vars: run.env_vars,
                        pre_job_hook_path: run.pre_job_hook_path,
                        source_pre_job_hook: run.source_pre_job_hook,
                        fail_on_pre_job_hook_error: run.fail_on_pre_job_hook_error,
                        post_job_hook_path: run.post_job_hook_path,
                        ..JobOptions::default()
                    },
                }),
                Err(err) => {
                    eprintln!("semaphore-agent: {err}");
                    EXIT_BAD_CONFIG
                }
            }
        }
        Command::Start(args) => {
            let env = |name: &str| std::env::var(name).ok();
            match config::load_start_config(&args, &env) {
                Ok(config) => match listener::init_logging() {
                    Ok(_) => {
                        for warning in &config.warnings {
                            log::warn!("{warning}");
                        }
                        log::debug!("Configuration:\n{}", config.redacted_summary());
                        listener::start(config, listener::ListenerOptions::from_env())
                    }
                    Err(err) => {
                        eprintln!("semaphore-agent: {err}");
                        EXIT_BAD_CONFIG
                    }
                },
                Err(err) => {
                    eprintln!("semaphore-agent: {err}");
                    EXIT_BAD_CONFIG
                }
            }
        }
    };
    std::process::exit(code);
}

/// The user's home directory: `$HOME`, else the current directory.
fn home_dir() -> std::path::PathBuf {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => home.into(),
        _ => std::env::current_dir().unwrap_or_else(|_| "/".into()),
    }
}

/// Warnings and errors on stderr, so `run --json` keeps stdout clean.
fn init_stderr_logging() {
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_env("SEMAPHORE_AGENT_LOG_LEVEL")
        .target(env_logger::Target::Stderr)
        .try_init();
}
