//! The commands of `dadd`, each a short async function over [`Client`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dadd_spec::api::ProcId;
use serde::Serialize;

use super::exit::{Code, Interrupted, UsageError};
use super::wait::{wait_final, Spinner};
use super::{render, spec_file, Args, Command, FilesCommand};
use crate::{Client, ClientBuilder, ListQuery};

/// Runs one command; the answer is the exit code when it did not fail.
pub(super) async fn run(args: Args) -> anyhow::Result<Code> {
    if let Command::Dev {
        run,
        bind_master,
        bind_worker,
    } = &args.command
    {
        return super::dev::run(super::dev::DevOptions {
            run: run.clone(),
            bind_master: *bind_master,
            bind_worker: *bind_worker,
            json: args.json,
        })
        .await;
    }
    let client = ClientBuilder::new(&args.master)
        .token(args.token.clone())
        .ca_file(args.ca_file.clone())
        .build()
        .map_err(|e| UsageError(e.to_string()))?;
    let json = args.json;
    match args.command {
        Command::Submit { spec, wait, follow } => {
            let spec = spec_file::load(&spec)?;
            submit(&client, &spec, wait || follow, follow, json).await
        }
        Command::Ps { state, host, limit } => {
            let page = client
                .list(&ListQuery {
                    state,
                    host,
                    limit,
                    next: None,
                })
                .await?;
            if json {
                print_json(&page)?;
            } else {
                print(&render::procs_table(&page.procs))?;
                if page.next.is_some() {
                    eprintln!("(more: use --limit to see more)");
                }
            }
            Ok(Code::Success)
        }
        Command::Show { id } => {
            let detail = client.get(id).await?;
            if json {
                print_json(&detail)?;
            } else {
                print(&render::proc_detail(&detail, &client.master_url()))?;
            }
            Ok(Code::Success)
        }
        Command::Logs { id, follow } => {
            if follow {
                interruptible(async {
                    wait_final(&client, id, true, &mut Spinner::new(false)).await
                })
                .await?;
            } else {
                client.copy_log(id, None, &mut tokio::io::stdout()).await?;
            }
            Ok(Code::Success)
        }
        Command::Kill { id } => {
            let answer = client.kill(id).await?;
            if json {
                print_json(&answer)?;
            } else {
                println!("process {id}: kill requested (now {})", answer.state);
            }
            Ok(Code::Success)
        }
        Command::Hosts => {
            let hosts = client.hosts().await?;
            if json {
                print_json(&hosts)?;
            } else {
                print(&render::hosts_table(&hosts))?;
            }
            Ok(Code::Success)
        }
        Command::Files { command } => files(&client, command, json).await,
        Command::Dev { .. } => unreachable!("handled above"),
    }
}

/// Submits a checked spec; with `wait`, waits and maps the final state to the exit code.
pub(super) async fn submit(
    client: &Client,
    spec: &serde_json::Value,
    wait: bool,
    follow: bool,
    json: bool,
) -> anyhow::Result<Code> {
    let created = client.submit(spec).await?;
    if !wait {
        if json {
            print_json(&created)?;
        } else {
            println!("process {} {}", created.id, created.state);
        }
        return Ok(Code::Success);
    }
    if !json && !follow {
        eprintln!("process {} {}", created.id, created.state);
    }
    let detail = finish(client, created.id, follow).await?;
    if json {
        print_json(&detail)?;
    } else {
        eprintln!(
            "process {}: {}",
            detail.summary.id,
            render::outcome(&detail.summary)
        );
    }
    Ok(Code::for_state(detail.summary.state).unwrap_or(Code::Error))
}

/// Waits for the end (following the log when asked), with Ctrl-C giving up.
pub(super) async fn finish(
    client: &Client,
    id: ProcId,
    follow: bool,
) -> anyhow::Result<dadd_spec::api::ProcDetail> {
    interruptible(async {
        let mut spinner = Spinner::for_stderr();
        wait_final(client, id, follow, &mut spinner).await
    })
    .await
}

/// Runs `fut` unless Ctrl-C comes first.
pub(super) async fn interruptible<T>(
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        out = fut => out,
        _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
    }
}

async fn files(client: &Client, command: FilesCommand, json: bool) -> anyhow::Result<Code> {
    match command {
        FilesCommand::Put { local, remote } => {
            let remote = match remote {
                Some(r) => r,
                None => local
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        UsageError(format!(
                            "{} has no file name; give the remote path",
                            local.display()
                        ))
                    })?,
            };
            let answer = client.put_file(&local, &remote).await?;
            if json {
                print_json(&answer)?;
            } else {
                println!(
                    "uploaded {} to /files/{} ({} bytes, sha256 {})",
                    local.display(),
                    answer.path,
                    answer.size,
                    answer.sha256
                );
            }
        }
        FilesCommand::Get { remote, local } => {
            let local = match local {
                Some(l) => l,
                None => PathBuf::from(
                    remote
                        .rsplit('/')
                        .find(|s| !s.is_empty())
                        .ok_or_else(|| UsageError(format!("{remote:?} names no file")))?,
                ),
            };
            if local.as_os_str() == "-" {
                client.get_file(&remote, &mut tokio::io::stdout()).await?;
            } else {
                let n = download(client, &remote, &local).await?;
                if !json {
                    eprintln!(
                        "downloaded /files/{remote} to {} ({n} bytes)",
                        local.display()
                    );
                }
            }
        }
        FilesCommand::Ls => {
            let files = client.list_files().await?;
            if json {
                print_json(&files)?;
            } else {
                print(&render::files_table(&files))?;
            }
        }
        FilesCommand::Rm { remote } => {
            client.delete_file(&remote).await?;
            if !json {
                println!("deleted /files/{remote}");
            }
        }
    }
    Ok(Code::Success)
}

/// Downloads into a temp file beside `local`, renamed over it only when complete.
async fn download(client: &Client, remote: &str, local: &Path) -> anyhow::Result<u64> {
    let dir = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let partial = tempfile::Builder::new()
        .prefix(".dadd-download-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    let std_file = partial
        .reopen()
        .with_context(|| format!("cannot open {}", partial.path().display()))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let n = client.get_file(remote, &mut file).await?;
    file.sync_all()
        .await
        .with_context(|| format!("cannot write {}", partial.path().display()))?;
    partial
        .persist(local)
        .with_context(|| format!("cannot write {}", local.display()))?;
    Ok(n)
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

pub(super) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    print(&text)
}
