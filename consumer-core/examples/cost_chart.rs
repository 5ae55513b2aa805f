//! Draws the README's cost chart (SVG) from the CSV that `lease_cost --sweep --csv` writes:
//! lease-table dollars per month against shard count, ours and KCL's, idle and busy, on
//! log scales. No plotting dependency: the chart is a few lines of SVG.
//!
//! ```text
//! cargo run --release -p consumer-core --features testkit --example lease_cost -- --sweep --csv docs/cost.csv
//! cargo run --release -p consumer-core --features testkit --example cost_chart -- docs/cost.csv docs/cost.svg
//! ```
//!
//! The points are the runs whose worker count grows with the shard count (100 shards / 4
//! workers, 1,000 / 20, 10,000 / 50).

use std::fmt::Write as _;

/// On-demand prices, dollars per million units (as in `lease_cost`).
const WRITE_UNIT_PRICE: f64 = 0.625;
const READ_UNIT_PRICE: f64 = 0.125;
const HOURS_PER_MONTH: f64 = 730.0;
/// The runs the chart draws: (shards, workers).
const POINTS: [(u32, u32); 3] = [(100, 4), (1000, 20), (10_000, 50)];

/// One series: its label, color, dash pattern and (shards, dollars per month) points.
struct Series {
    label: &'static str,
    color: &'static str,
    dash: &'static str,
    points: Vec<(f64, f64)>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(csv_path), Some(svg_path)) = (args.next(), args.next()) else {
        return Err("usage: cost_chart COST.csv OUT.svg".into());
    };
    let csv =
        std::fs::read_to_string(&csv_path).map_err(|e| format!("cannot read {csv_path}: {e}"))?;
    let mut series = vec![
        Series {
            label: "KCL, busy",
            color: "#d62728",
            dash: "6 4",
            points: vec![],
        },
        Series {
            label: "KCL, idle",
            color: "#d62728",
            dash: "",
            points: vec![],
        },
        Series {
            label: "ours, busy",
            color: "#1f77b4",
            dash: "6 4",
            points: vec![],
        },
        Series {
            label: "ours, idle",
            color: "#1f77b4",
            dash: "",
            points: vec![],
        },
    ];
    for (number, line) in csv.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [shards, workers, load, protocol, reads, writes, ..] = fields[..] else {
            return Err(format!("{csv_path}:{}: expected 9 fields: {line}", number + 1).into());
        };
        let number_at = |text: &str| {
            text.parse::<f64>()
                .map_err(|e| format!("{csv_path}:{}: {text:?}: {e}", number + 1))
        };
        let run = (number_at(shards)? as u32, number_at(workers)? as u32);
        if !POINTS.contains(&run) {
            continue;
        }
        let dollars = (number_at(reads)? * READ_UNIT_PRICE + number_at(writes)? * WRITE_UNIT_PRICE)
            / 1e6
            * HOURS_PER_MONTH;
        let label = match (protocol, load) {
            ("kcl", "busy") => "KCL, busy",
            ("kcl", "idle") => "KCL, idle",
            ("ours", "busy") => "ours, busy",
            ("ours", "idle") => "ours, idle",
            _ => continue,
        };
        if let Some(s) = series.iter_mut().find(|s| s.label == label) {
            s.points.push((f64::from(run.0), dollars));
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    std::fs::write(&svg_path, draw(&series))
        .map_err(|e| format!("cannot write {svg_path}: {e}"))?;
    println!("chart written to {svg_path}");
    Ok(())
}

fn draw(series: &[Series]) -> String {
    let (width, height) = (760.0, 440.0);
    let (left, right, top, bottom) = (80.0, 170.0, 40.0, 60.0);
    let (plot_w, plot_h) = (width - left - right, height - top - bottom);
    let all = series.iter().flat_map(|s| s.points.iter());
    let max = all.clone().map(|p| p.1).fold(1.0, f64::max);
    let min = all.map(|p| p.1).fold(max, f64::min).max(0.01);
    let (y_lo, y_hi) = (min.log10().floor(), max.log10().ceil());
    let (x_lo, x_hi) = (2.0, 4.0);
    let x = |shards: f64| left + (shards.log10() - x_lo) / (x_hi - x_lo) * plot_w;
    let y = |dollars: f64| top + (y_hi - dollars.max(0.01).log10()) / (y_hi - y_lo) * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">Lease-table cost, $/month (on-demand), against shard count</text>
"##,
        left + plot_w / 2.0
    );
    for decade in (y_lo as i32)..=(y_hi as i32) {
        let value = 10f64.powi(decade);
        let py = y(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">${}</text>"##,
            left + plot_w,
            left - 8.0,
            py + 4.0,
            dollars_label(value)
        );
    }
    for shards in [100.0, 1000.0, 10_000.0] {
        let px = x(shards);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" x2="{px:.1}" y1="{top}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            top + plot_h,
            top + plot_h + 20.0,
            match shards as u32 {
                100 => "100 shards / 4 workers",
                1000 => "1,000 / 20",
                _ => "10,000 / 50",
            }
        );
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(shards, dollars)| format!("{:.1},{:.1}", x(*shards), y(*dollars)))
            .collect();
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="{}" stroke-width="2.5" stroke-dasharray="{}" points="{}"/>"##,
            s.color,
            s.dash,
            path.join(" ")
        );
        for (shards, dollars) in &s.points {
            let _ = writeln!(
                svg,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"><title>{}: {} shards, ${:.2}/month</title></circle>"##,
                x(*shards),
                y(*dollars),
                s.color,
                s.label,
                shards,
                dollars
            );
        }
        let ly = top + 20.0 + 24.0 * i as f64;
        let lx = left + plot_w + 20.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2.5" stroke-dasharray="{}"/><text x="{}" y="{}">{}</text>"##,
            lx + 30.0,
            s.color,
            s.dash,
            lx + 38.0,
            ly + 4.0,
            s.label
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">streams requests (GetRecords etc.) cost the same for both and are not drawn</text>
</svg>"##,
        left + plot_w / 2.0,
        height - 12.0
    );
    svg
}

fn dollars_label(value: f64) -> String {
    if value >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}
