//! `dadd dev`: the real `dadd-master` and `dadd-worker` binaries started,
//! registered, and stopped together on Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

/// The target dir's binaries, built first (a no-op when up to date): they
/// are binaries of other packages, which `cargo test` does not build.
pub(crate) fn build_bins(packages: &[&str]) -> PathBuf {
    let dadd = PathBuf::from(env!("CARGO_BIN_EXE_dadd"));
    let dir = dadd.parent().expect("a target dir").to_path_buf();
    let mut args = vec!["build", "--bins"];
    for p in packages {
        args.extend(["-p", p]);
    }
    dadd_tests::cargo(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), &args);
    dir
}

#[actix_web::test]
async fn dev_starts_master_and_worker_and_stops_both_on_ctrl_c() {
    build_bins(&["dadd-master", "dadd-worker"]);
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let (m, w) = (free(), free());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
        .args([
            "--json",
            "dev",
            "--bind-master",
            &m.to_string(),
            "--bind-worker",
            &w.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("dadd dev starts");
    // `dadd dev --json` prints the URLs once both daemons answer.
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let n = tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut text)
                .await
                .expect("read");
            assert!(n > 0, "dadd dev ended before printing its URLs");
            if text.ends_with("}\n") {
                break;
            }
        }
    })
    .await
    .expect("dadd dev is ready within 60 s");
    let urls: serde_json::Value = serde_json::from_str(&text).expect("the URLs as JSON");
    assert_eq!(urls["master"], format!("http://{m}"));
    assert_eq!(urls["worker"], format!("http://{w}"));
    let client = dadd_client::Client::new(&format!("http://{m}")).expect("client");
    let hosts = client.hosts().await.expect("the dev master answers");
    assert!(
        hosts.iter().any(|h| h.address == w.to_string()),
        "{hosts:?}"
    );

    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("Ctrl-C");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("dadd dev stops within 30 s of Ctrl-C")
        .expect("exit status");
    assert!(status.success(), "{status:?}");
    assert!(client.health().await.is_err(), "the master is stopped");
    assert!(
        std::net::TcpStream::connect(w).is_err(),
        "the worker is stopped"
    );
}

#[actix_web::test]
async fn dev_run_hello_is_the_readme_command() {
    let bins = build_bins(&["dadd-master", "dadd-worker", "dadd-runner"]);
    assert!(bins.join("dadd-runner").is_file());
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let (m, w) = (free(), free());
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dadd"))
            .current_dir(&workspace)
            .args([
                "dev",
                "--run",
                "examples/hello.json",
                "--bind-master",
                &m.to_string(),
                "--bind-worker",
                &w.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("dadd dev --run ends within 120 s")
    .expect("dadd dev runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("hello from "),
        "the command's log: {stdout}"
    );
    assert!(stdout.contains("GREETING=hi"), "{stdout}");
    assert!(stderr.contains(": success (exit 0)"), "{stderr}");
    assert!(
        std::net::TcpStream::connect(m).is_err(),
        "the master is stopped"
    );
    assert!(
        std::net::TcpStream::connect(w).is_err(),
        "the worker is stopped"
    );
}
