//! Draws the README's cost chart (SVG) from the CSV that `lease_cost --sweep --csv` writes:
//! lease-table dollars per month against shard count, ours and KCL's, idle and busy, on
//! log scales, drawn with `plotters` (its SVG backend).
//!
//! ```text
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example lease_cost -- --sweep --csv docs/cost.csv
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example cost_chart -- docs/cost.csv docs/cost.svg
//! ```
//!
//! The points are the runs whose worker count grows with the shard count (100 shards / 4
//! workers, 1,000 / 20, 10,000 / 50).

use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// On-demand prices, dollars per million units (as in `lease_cost`).
const WRITE_UNIT_PRICE: f64 = 0.625;
const READ_UNIT_PRICE: f64 = 0.125;
const HOURS_PER_MONTH: f64 = 730.0;
/// The runs the chart draws: (shards, workers).
const POINTS: [(u32, u32); 3] = [(100, 4), (1000, 20), (10_000, 50)];

/// KCL's series are red, ours blue; busy ones dashed.
const KCL: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const OURS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const NOTE: RGBColor = RGBColor(0x55, 0x55, 0x55);

/// One series: its label, color, whether dashed, and (shards, dollars per month) points.
struct Series {
    label: &'static str,
    color: RGBColor,
    dashed: bool,
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
            color: KCL,
            dashed: true,
            points: vec![],
        },
        Series {
            label: "KCL, idle",
            color: KCL,
            dashed: false,
            points: vec![],
        },
        Series {
            label: "ours, busy",
            color: OURS,
            dashed: true,
            points: vec![],
        },
        Series {
            label: "ours, idle",
            color: OURS,
            dashed: false,
            points: vec![],
        },
    ];
    for (number, line) in csv.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [shards, workers, load, protocol, reads, writes, ..] = fields[..] else {
            return Err(format!(
                "{csv_path}:{}: expected at least 6 fields: {line}",
                number + 1
            )
            .into());
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
    draw(&series, &svg_path).map_err(|e| format!("cannot write {svg_path}: {e}"))?;
    println!("chart written to {svg_path}");
    Ok(())
}

fn draw(series: &[Series], svg_path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let max = all.clone().map(|p| p.1).fold(1.0, f64::max);
    let min = all.map(|p| p.1).fold(max, f64::min).max(0.01);
    let decades = 10f64.powf(min.log10().floor())..10f64.powf(max.log10().ceil());

    let root = SVGBackend::new(svg_path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (chart_area, note_area) = root.split_vertically(415);
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(
            "Lease-table cost, $/month (on-demand), against shard count",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((80f64..12_500f64).log_scale(), decades.log_scale())?;
    chart
        .configure_mesh()
        .x_desc("shards (with 4 workers at 100, 20 at 1,000, 50 at 10,000)")
        .y_desc("$ per month")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&|shards| thousands(*shards))
        .y_label_formatter(&|dollars| format!("${}", thousands(*dollars)))
        .light_line_style(WHITE)
        .draw()?;
    for s in series {
        let style = s.color.stroke_width(2);
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?
        };
        let dashed = s.dashed;
        drawn.label(s.label).legend(move |(x, y)| {
            let ends = vec![(x, y), (x + 24, y)];
            if dashed {
                DashedPathElement::new(ends, 6, 4, style).into_dyn()
            } else {
                PathElement::new(ends, style).into_dyn()
            }
        });
        chart.draw_series(
            s.points
                .iter()
                .map(|&point| Circle::new(point, 4, s.color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(NOTE)
        .label_font(("sans-serif", 15))
        .draw()?;
    note_area.draw(&Text::new(
        "streams requests (GetRecords etc.) cost the same for both and are not drawn",
        (120, 5),
        ("sans-serif", 15).into_font().color(&NOTE),
    ))?;
    root.present()?;
    Ok(())
}

/// `12345.0` as `12,345`; values under 1 as they are (`0.1`).
fn thousands(value: f64) -> String {
    if value < 1.0 {
        return format!("{value}");
    }
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}
