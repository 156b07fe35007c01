//! The comparison's results drawn as SVG charts (with `plotters`), from the
//! same run as the tables: grouped bars, one colour per server, so Beacon
//! stands beside NATS with its default and with `sync_interval: always`.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One server's (or one API's) values, one per group.
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

impl Series {
    pub fn new(name: &str, values: Vec<f64>) -> Series {
        Series {
            name: name.to_owned(),
            values,
        }
    }
}

/// One chart: the groups along the x axis, a bar per series in each.
pub struct Chart {
    pub file: String,
    pub title: String,
    /// A note under the title (what "better" means, the load).
    pub caption: String,
    pub y_label: String,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
}

// Beacon's colours first (blue, teal), then NATS default and always (grey,
// orange): the same server keeps its colour in every chart.
const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(150, 150, 150),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

fn colour_of(name: &str, index: usize) -> RGBColor {
    if name.starts_with("NATS (default") {
        COLOURS[2]
    } else if name.starts_with("NATS (always") || name.starts_with("NATS (sync") {
        COLOURS[3]
    } else if name.contains("PublishStream") {
        COLOURS[1]
    } else if name.starts_with("Beacon") {
        COLOURS[0]
    } else {
        COLOURS[4 - (index % 2)]
    }
}

/// Draws `chart` into `dir/chart.file`.
pub fn draw(dir: &Path, chart: &Chart) -> Result<()> {
    let path = dir.join(&chart.file);
    let root = SVGBackend::new(&path, (860, 460)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("drawing {}: {e}", chart.file);
    root.fill(&WHITE).map_err(err)?;
    let groups = chart.groups.len().max(1);
    let top = chart
        .series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.12 } else { 1.0 };
    let (title_area, body) = root.split_vertically(82);
    title_area
        .draw(&Text::new(
            chart.title.as_str(),
            (12, 8),
            ("sans-serif", 20).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    title_area
        .draw(&Text::new(
            chart.caption.as_str(),
            (12, 34),
            ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(err)?;
    // The legend in the heading, clear of the bars.
    let mut x = 12i32;
    for (j, s) in chart.series.iter().enumerate() {
        let colour = colour_of(&s.name, j);
        title_area
            .draw(&Rectangle::new([(x, 58), (x + 12, 70)], colour.filled()))
            .map_err(err)?;
        title_area
            .draw(&Text::new(
                s.name.as_str(),
                (x + 18, 57),
                ("sans-serif", 13).into_font().color(&BLACK),
            ))
            .map_err(err)?;
        x += 18 + 7 * s.name.chars().count() as i32 + 24;
    }
    let mut ctx = ChartBuilder::on(&body)
        .margin_left(12)
        .margin_right(16)
        .margin_bottom(8)
        .x_label_area_size(32)
        .y_label_area_size(78)
        .build_cartesian_2d(0f64..groups as f64, 0f64..top)
        .map_err(err)?;
    let labels = chart.groups.clone();
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            // Labels at each group's middle only.
            let i = (*x - 0.5).round();
            if (*x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_labels(8)
        .light_line_style(RGBColor(238, 238, 238))
        .y_desc(chart.y_label.as_str())
        .y_label_formatter(&|y| short(*y))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let n = chart.series.len().max(1) as f64;
    let width = 0.8 / n;
    for (j, s) in chart.series.iter().enumerate() {
        let colour = colour_of(&s.name, j);
        let bars = s.values.iter().enumerate().map(move |(i, v)| {
            let x0 = i as f64 + 0.1 + j as f64 * width;
            Rectangle::new(
                [(x0 + width * 0.06, 0.0), (x0 + width * 0.94, v.max(0.0))],
                colour.filled(),
            )
        });
        ctx.draw_series(bars).map_err(err)?;
        // The value above each bar.
        let texts = s.values.iter().enumerate().map(move |(i, v)| {
            let x = i as f64 + 0.1 + (j as f64 + 0.5) * width;
            Text::new(
                short(*v),
                (x - width * 0.4, v.max(0.0) + top * 0.045),
                ("sans-serif", 11).into_font(),
            )
        });
        ctx.draw_series(texts).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// 1234567 → "1.23M", 8066 → "8.07k", 0.38 → "0.38".
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
