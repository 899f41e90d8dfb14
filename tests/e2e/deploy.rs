//! What an operator copies from `deploy/` and the README must work with the
//! binaries as they are: the env examples name variables the daemons read,
//! the systemd units keep the settings the design depends on (the worker's
//! `KillMode=process` above all) and call flags that exist, the README's
//! commands name real binaries and flags, and every relative link in the
//! README and `docs/` leads to a file.
//!
//! That `deploy/master.toml` and `deploy/worker.toml` load into the
//! daemons' config types (unknown keys refused) is tested beside each config
//! type, in `dadd-master` and `dadd-worker`; not repeated here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::bin;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---- env examples ----------------------------------------------------------

/// One `NAME=value` of an env example; `active` is false for a commented-out one.
#[derive(Debug)]
struct EnvVar {
    name: String,
    value: String,
    active: bool,
}

/// Every assignment in an env file, active or commented out (`# NAME=value`):
/// a documented but commented variable must be real too.
fn env_vars(text: &str) -> Vec<EnvVar> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let (active, rest) = match line.strip_prefix('#') {
            Some(rest) => (false, rest.trim_start()),
            None => (true, line),
        };
        let Some((name, value)) = rest.split_once('=') else {
            continue;
        };
        let looks_like_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if looks_like_name {
            out.push(EnvVar {
                name: name.to_owned(),
                value: value.to_owned(),
                active,
            });
        } else {
            assert!(!active, "not a NAME=value line in an env example: {line:?}");
        }
    }
    out
}

/// The value at `DADD_A__B` (`a.b`) in a config serialized to JSON, as the
/// env file would write it (lists comma-separated).
fn value_at(config: &serde_json::Value, key: &str) -> Option<String> {
    let mut v = config;
    for part in key.split('.') {
        v = v.get(part)?;
    }
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    })
}

/// The `[env: NAME=]` variables a binary's `--help` lists.
fn help_env_names(binary: &str) -> Vec<String> {
    let help = help_text(&bin(binary), &[]);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_owned))
        .collect()
}

#[test]
fn master_env_example_sets_master_settings() {
    let vars = env_vars(&read("deploy/master.env.example"));
    assert!(
        vars.iter().any(|v| v.active),
        "deploy/master.env.example sets nothing"
    );
    let env: Vec<(String, String)> = vars
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    let config = dadd_master::Config::load(&dadd_master::Cli::default(), env)
        .unwrap_or_else(|e| panic!("the master refuses deploy/master.env.example: {e}"));
    let json = serde_json::to_value(&config).expect("the config serializes");
    for v in &vars {
        let key = v
            .name
            .strip_prefix("DADD_")
            .unwrap_or_else(|| panic!("{} is not a DADD_ variable: the master ignores it", v.name))
            .to_lowercase()
            .replace("__", ".");
        assert_eq!(
            value_at(&json, &key).as_deref(),
            Some(v.value.as_str()),
            "{} in deploy/master.env.example does not reach the master's `{key}`",
            v.name
        );
    }
}

#[test]
fn worker_env_example_sets_worker_and_runner_settings() {
    let vars = env_vars(&read("deploy/worker.env.example"));
    assert!(
        vars.iter().any(|v| v.active),
        "deploy/worker.env.example sets nothing"
    );
    let worker_env: HashMap<String, String> = vars
        .iter()
        .filter(|v| v.name.starts_with("DADD_WORKER_"))
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    let config = dadd_worker::Config::load(
        None,
        Some(worker_env.clone()),
        &dadd_worker::config::Overrides::default(),
    )
    .unwrap_or_else(|e| panic!("the worker refuses deploy/worker.env.example: {e}"));
    let json = serde_json::to_value(&config).expect("the config serializes");
    for (name, value) in &worker_env {
        let key = name["DADD_WORKER_".len()..]
            .to_lowercase()
            .replace("__", ".");
        assert_eq!(
            value_at(&json, &key).as_deref(),
            Some(value.as_str()),
            "{name} in deploy/worker.env.example does not reach the worker's `{key}`"
        );
    }
    // The rest reaches the runners, which inherit the worker's environment.
    let runner_env = help_env_names("dadd-runner");
    for v in vars.iter().filter(|v| !v.name.starts_with("DADD_WORKER_")) {
        assert!(
            runner_env.contains(&v.name),
            "{} in deploy/worker.env.example is read by neither the worker nor the runner (the runner reads {runner_env:?})",
            v.name
        );
    }
}

// ---- systemd units -----------------------------------------------------------

/// A unit file's settings: `(section, key)` → values in order.
type Unit = BTreeMap<(String, String), Vec<String>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let line = format!("{pending}{line}");
        pending.clear();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a KEY=value line in a unit: {line:?}"));
        unit.entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

fn service<'a>(unit: &'a Unit, key: &str) -> Vec<&'a str> {
    unit.get(&("Service".to_owned(), key.to_owned()))
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

fn one<'a>(unit: &'a Unit, file: &str, key: &str) -> &'a str {
    match service(unit, key).as_slice() {
        [v] => v,
        other => panic!("{file}: expected one {key}=, found {other:?}"),
    }
}

/// `--help` of a binary (with `args` first), which must succeed.
fn help_text(binary: &Path, args: &[&str]) -> String {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    assert!(
        out.status.success(),
        "`{} {} --help` is refused: {}",
        binary.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `--flag` a help text lists.
fn help_flags(help: &str) -> Vec<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '`')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.split(['=', '<'])
                .next()
                .unwrap_or(w)
                .trim_end_matches(['.', ')', ':'])
                .to_owned()
        })
        .collect()
}

/// Checks that `args` (a command line minus its program) uses only flags the
/// binary lists, and that the binary parses the whole line (values included):
/// clap reads every argument before it acts on a trailing `--help`.
fn check_command_line(binary: &str, args: &[&str], origin: &str) {
    let path = bin(binary);
    // `dadd` has subcommands, each with its own flags.
    let subcommands: Vec<&str> = if binary == "dadd" {
        args.iter()
            .take_while(|a| !a.starts_with('-'))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    let flags = help_flags(&help_text(&path, &subcommands));
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap_or(arg);
        assert!(
            flags.iter().any(|f| f == flag),
            "{origin}: `{binary}` has no flag {flag} (it has {flags:?})"
        );
    }
    help_text(&path, args);
}

struct UnitFile {
    name: &'static str,
    unit: Unit,
}

fn units() -> Vec<UnitFile> {
    ["dadd-master.service", "dadd-worker.service"]
        .into_iter()
        .map(|name| UnitFile {
            name,
            unit: parse_unit(&read(&format!("deploy/systemd/{name}"))),
        })
        .collect()
}

#[test]
fn units_keep_the_settings_that_matter() {
    for UnitFile { name, unit } in units() {
        assert_eq!(one(&unit, name, "Restart"), "on-failure", "{name}");
        assert_eq!(one(&unit, name, "NoNewPrivileges"), "yes", "{name}");
        assert_eq!(one(&unit, name, "ProtectSystem"), "strict", "{name}");
        // The daemons send no sd_notify readiness: `notify` would time out.
        assert_eq!(one(&unit, name, "Type"), "exec", "{name}");
        assert_eq!(one(&unit, name, "User"), "dadd", "{name}");
        assert!(
            !service(&unit, "StateDirectory").is_empty(),
            "{name}: no StateDirectory="
        );
        assert!(
            service(&unit, "ExecStart")
                .iter()
                .all(|l| l.contains("--log-format json")),
            "{name}: journald should get JSON logs"
        );
    }
}

#[test]
fn worker_unit_leaves_runners_alone() {
    let text = read("deploy/systemd/dadd-worker.service");
    let unit = parse_unit(&text);
    let file = "dadd-worker.service";
    assert_eq!(
        one(&unit, file, "KillMode"),
        "process",
        "with the default cgroup kill every runner dies with the worker"
    );
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .any(|l| l.contains("systemctl stop")),
        "{file}: the comment must say what `systemctl stop` leaves running"
    );
    assert!(
        !service(&unit, "PrivateTmp").contains(&"yes"),
        "{file}: a private /tmp is removed under runners that outlive the unit"
    );
    // ProtectSystem=strict leaves only ReadWritePaths= and the unit's own
    // state/cache dirs writable: the work root and /tmp must be among them.
    let writable = service(&unit, "ReadWritePaths").join(" ");
    let exec = one(&unit, file, "ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    let work_root = args
        .iter()
        .position(|a| *a == "--work-root")
        .and_then(|i| args.get(i + 1))
        .expect("the worker unit names its --work-root");
    assert!(
        writable
            .split_whitespace()
            .any(|p| work_root.starts_with(p.trim_start_matches(['-', '+']))),
        "{file}: the work root {work_root} is not in ReadWritePaths= ({writable})"
    );
    for tmp in ["/tmp", "/var/tmp"] {
        assert!(
            writable.split_whitespace().any(|p| p == tmp),
            "{file}: commands need a writable {tmp} under ProtectSystem=strict"
        );
    }
}

#[test]
fn unit_exec_start_uses_real_binaries_and_flags() {
    for UnitFile { name, unit } in units() {
        for line in service(&unit, "ExecStart") {
            let mut words = line.split_whitespace();
            let program = words.next().expect("ExecStart names a program");
            let binary = Path::new(program)
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a file name");
            assert_eq!(
                binary,
                name.trim_end_matches(".service"),
                "{name} starts another daemon"
            );
            let args: Vec<&str> = words.collect();
            check_command_line(binary, &args, &format!("deploy/systemd/{name}"));
        }
    }
}

/// `systemd-analyze verify`, when the host has it: unknown keys and bad
/// values are only warnings there, so any line about the unit fails.
#[test]
fn units_pass_systemd_analyze_verify() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("systemd-analyze is not installed: only the parsed checks ran");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for name in ["dadd-master.service", "dadd-worker.service"] {
        let text = read(&format!("deploy/systemd/{name}"));
        // Point ExecStart at the built binary: verify checks it is executable.
        let daemon = name.trim_end_matches(".service");
        let built = bin(daemon);
        let text = text.replace(
            &format!("/usr/local/bin/{daemon}"),
            &built.display().to_string(),
        );
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write the unit");
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_us: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dadd-master") || l.contains("dadd-worker"))
        .collect();
    assert!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

// ---- README and docs ---------------------------------------------------------

/// The commands of the fenced `sh` blocks of a markdown text.
fn shell_commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(lang) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && matches!(lang, "sh" | "bash" | "shell" | "console");
            continue;
        }
        if in_sh && !trimmed.is_empty() && !trimmed.starts_with('#') {
            for part in trimmed.trim_start_matches("$ ").split("&&") {
                out.push(part.trim().to_owned());
            }
        }
    }
    out
}

/// The workspace binaries: `crates/*/src/main.rs` is the crate's name,
/// `crates/*/src/bin/NAME.rs` is NAME.
fn package_binary(package: &str) -> String {
    let dir = root().join("crates").join(package);
    assert!(
        dir.join("Cargo.toml").is_file(),
        "no workspace package {package}"
    );
    if dir.join("src/main.rs").is_file() {
        return package.to_owned();
    }
    let bins: Vec<String> = std::fs::read_dir(dir.join("src/bin"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.path()
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    match bins.as_slice() {
        [one] => one.clone(),
        other => panic!("package {package} has binaries {other:?}: name one with --bin"),
    }
}

fn check_readme_command(command: &str) {
    let words: Vec<&str> = command.split_whitespace().collect();
    let origin = format!("README.md `{command}`");
    // Every file a command names must exist (the spec files above all).
    for w in &words {
        if w.ends_with(".json") && !w.starts_with('-') {
            assert!(root().join(w).is_file(), "{origin}: no file {w}");
        }
    }
    match words.as_slice() {
        ["cargo", "run", rest @ ..] => {
            let split = rest.iter().position(|w| *w == "--").unwrap_or(rest.len());
            let (cargo_args, bin_args) = rest.split_at(split);
            let bin_args = bin_args.get(1..).unwrap_or_default();
            let binary = match cargo_args {
                [.., "--bin", b] => (*b).to_owned(),
                ["-p", p] | ["--package", p] => package_binary(p),
                other => panic!("{origin}: cannot tell the binary of cargo run {other:?}"),
            };
            check_command_line(&binary, bin_args, &origin);
        }
        ["cargo", sub, args @ ..] => {
            for (i, w) in args.iter().enumerate() {
                if matches!(*w, "-p" | "--package") {
                    package_binary(args.get(i + 1).expect("-p names a package"));
                }
            }
            // cargo reads every flag before it acts on --help.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .arg(sub)
                .args(args)
                .arg("--help")
                .current_dir(root())
                .output()
                .expect("cargo runs");
            assert!(
                out.status.success(),
                "{origin}: cargo refuses it: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        [program, args @ ..] => {
            let binary = program
                .strip_prefix("./target/debug/")
                .or_else(|| program.strip_prefix("./target/release/"))
                .unwrap_or(program);
            check_command_line(binary, args, &origin);
        }
        [] => {}
    }
}

#[test]
fn readme_commands_name_real_binaries_and_flags() {
    let readme = read("README.md");
    for exact in [
        "cargo build --bins && ./target/debug/dadd dev --run examples/hello.json",
        "cargo test --workspace",
    ] {
        assert!(
            readme.lines().any(|l| l.trim() == exact),
            "the README's quick start lost `{exact}`"
        );
    }
    let commands = shell_commands(&readme);
    assert!(
        commands.len() >= 3,
        "too few commands found in the README: {commands:?}"
    );
    for command in &commands {
        check_readme_command(command);
    }
}

/// The targets of `[text](target)` links in a markdown text.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].trim().to_owned());
                rest = &rest[end..];
            }
        }
    }
    out
}

#[test]
fn relative_links_in_readme_and_docs_lead_to_files() {
    let mut files = vec![root().join("README.md")];
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/ exists");
    files.extend(
        docs.filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "md")),
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read markdown");
        for link in links(&text) {
            let target = link.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let base = file.parent().expect("a markdown file has a dir");
            if !base.join(target).exists() {
                broken.push(format!("{}: {link}", file.display()));
            }
        }
    }
    assert!(
        checked > 5,
        "no relative links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "links to nothing: {broken:#?}");
}

#[test]
fn operations_guide_is_linked_from_the_readme() {
    let readme = read("README.md");
    for doc in [
        "docs/ARCHITECTURE.md",
        "docs/spec.md",
        "docs/api.md",
        "docs/operations.md",
        "docs/benchmarks.md",
    ] {
        assert!(
            links(&readme).iter().any(|l| l == doc),
            "README.md does not link {doc}"
        );
    }
}

// ---- deploy/postgres.sql -----------------------------------------------------

/// Drops the role and database a test made, whatever happened.
struct PgCleanup {
    admin_url: String,
    name: String,
}

impl Drop for PgCleanup {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {}", self.name))
            .args(["-c"])
            .arg(format!("DROP ROLE IF EXISTS {}", self.name))
            .output();
    }
}

/// `deploy/postgres.sql` makes a role and database the master can run its
/// migrations in, as that role (not a superuser). Runs when
/// `DADD_TEST_POSTGRES_URL` names a superuser's connection and `psql` exists.
#[test]
fn postgres_sql_gives_the_master_a_usable_database() {
    let Ok(admin_url) = std::env::var("DADD_TEST_POSTGRES_URL") else {
        eprintln!("DADD_TEST_POSTGRES_URL is not set: deploy/postgres.sql not tried");
        return;
    };
    if Command::new("psql").arg("--version").output().is_err() {
        eprintln!("psql is not installed: deploy/postgres.sql not tried");
        return;
    }
    // The script's names, made unique so runs never collide.
    let name = format!("dadd_deploy_{}", std::process::id());
    let script = read("deploy/postgres.sql")
        .replace("ROLE dadd ", &format!("ROLE {name} "))
        .replace(
            "DATABASE dadd OWNER dadd",
            &format!("DATABASE {name} OWNER {name}"),
        )
        .replace("\\connect dadd", &format!("\\connect {name}"))
        .replace("OWNER TO dadd;", &format!("OWNER TO {name};"));
    assert!(
        script.matches(name.as_str()).count() >= 4,
        "deploy/postgres.sql no longer has the expected statements:\n{script}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("postgres.sql");
    std::fs::write(&file, &script).expect("write the script");
    let _cleanup = PgCleanup {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let out = Command::new("psql")
        .arg(&admin_url)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "deploy/postgres.sql fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // postgres://USER@HOST:PORT/DB → postgres://NAME:change-me@HOST:PORT/NAME
    let rest = admin_url
        .split_once("://")
        .map_or(admin_url.as_str(), |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['/', '?']).next().unwrap_or(host);
    let db_url = format!("postgres://{name}:change-me@{host}/{name}");
    let mut master = crate::support::ChildGuard::new(
        Command::new(bin("dadd-master"))
            .args([
                "--bind",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--database-url",
            ])
            .arg(&db_url)
            .arg("--state-dir")
            .arg(dir.path())
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("master.log")).expect("log file"))
            .spawn()
            .expect("dadd-master starts"),
    );
    let log = dir.path().join("master.log");
    let addr: String = crate::support::wait_for(
        "the master to listen on the database postgres.sql made",
        std::time::Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find_map(|v| {
                    v.pointer("/fields/addr")
                        .and_then(|a| a.as_str())
                        .map(str::to_owned)
                })
        },
    );
    let body = ureq::get(&format!("http://{addr}/api/health"))
        .call()
        .expect("GET /api/health")
        .body_mut()
        .read_to_string()
        .expect("a health body");
    let health: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(health["store"], "postgres", "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    master.signal(nix::sys::signal::Signal::SIGTERM);
    master.wait(std::time::Duration::from_secs(20));
}
