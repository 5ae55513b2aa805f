//! `public-api-check DOC_DIR CRATE_DIR...`: compares the public API of each library crate
//! (the package in CRATE_DIR) with its snapshot `CRATE_DIR/public-api.txt`, from the rustdoc
//! JSON that `make public-api` writes into `DOC_DIR` (one line per public item, as the
//! `public-api` crate renders it: paths, signatures, trait impls, auto traits). Exit 1 on a
//! difference, naming removed items (breaking for users) and added ones. `--update`
//! rewrites the snapshots instead.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

const UPDATE: &str = "make public-api-update";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let update = args.first().is_some_and(|a| a == "--update");
    if update {
        args.remove(0);
    }
    let Some((doc_dir, crates)) = args.split_first() else {
        eprintln!("usage: public-api-check [--update] DOC_DIR CRATE_DIR...");
        return ExitCode::from(2);
    };
    let mut changed = false;
    for crate_dir in crates {
        match check(Path::new(doc_dir), Path::new(crate_dir), update) {
            Ok(same) => changed |= !same,
            Err(error) => {
                eprintln!("public-api-check: {crate_dir}: {error}");
                return ExitCode::from(2);
            }
        }
    }
    if changed && !update {
        eprintln!(
            "\nThe public API differs from its snapshot. A removed or changed line breaks \
             users (a semver-major change: raise the minor version before 1.0 and say so in \
             CHANGELOG.md). If the change is intended, record it with `{UPDATE}` and commit \
             the public-api.txt files."
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Whether the crate's API equals its snapshot (after `--update`, always true).
fn check(doc_dir: &Path, crate_dir: &Path, update: bool) -> Result<bool, String> {
    let name = package_name(crate_dir)?;
    let json = doc_dir.join(format!("{}.json", name.replace('-', "_")));
    let api = public_api::Builder::from_rustdoc_json(&json)
        .omit_blanket_impls(true)
        .build()
        .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
    let current: Vec<String> = api.items().map(ToString::to_string).collect();
    let snapshot_path = crate_dir.join("public-api.txt");
    if update {
        let text = current.join("\n") + "\n";
        std::fs::write(&snapshot_path, text)
            .map_err(|e| format!("cannot write {}: {e}", snapshot_path.display()))?;
        println!(
            "{}: {} items recorded",
            snapshot_path.display(),
            current.len()
        );
        return Ok(true);
    }
    let recorded = std::fs::read_to_string(&snapshot_path).map_err(|e| {
        format!(
            "cannot read {} ({e}): run `{UPDATE}`",
            snapshot_path.display()
        )
    })?;
    let recorded: BTreeSet<&str> = recorded.lines().collect();
    let current: BTreeSet<&str> = current.iter().map(String::as_str).collect();
    let removed: Vec<_> = recorded.difference(&current).collect();
    let added: Vec<_> = current.difference(&recorded).collect();
    if removed.is_empty() && added.is_empty() {
        println!("{}: public API unchanged ({} items)", name, current.len());
        return Ok(true);
    }
    eprintln!("{name}: the public API changed");
    for line in &removed {
        eprintln!("  - {line}");
    }
    for line in &added {
        eprintln!("  + {line}");
    }
    Ok(false)
}

/// The package name in `CRATE_DIR/Cargo.toml` (folders and package names may differ).
fn package_name(crate_dir: &Path) -> Result<String, String> {
    let manifest_path = crate_dir.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .map_err(|e| format!("cannot read {}: {e}", manifest_path.display()))?;
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("name = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no package name", manifest_path.display()))
}
