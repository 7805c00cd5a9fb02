//! The simulation's learning curves as SVG and PNG, drawn with plotters: success per epoch for
//! each policy (mean over seeds, with a band of one standard deviation), the policies in one
//! panel and the lambda sweep in another.
//!
//! Text is laid out with a font compiled into the binary (Ubuntu Light from
//! `epaint_default_fonts`), so drawing needs no system fonts or font libraries.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use memrl_bench::simulate::{PolicySummary, Report};
use plotters::coord::Shift;
use plotters::prelude::*;

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1400, 560);

/// Colours by policy name; the sweep is shaded from light (lambda 0) to dark (lambda 1).
fn colour(name: &str, sweep_rank: Option<(usize, usize)>) -> RGBColor {
    if let Some((i, n)) = sweep_rank {
        let t = i as f64 / (n.max(2) - 1) as f64;
        let shade = |a: f64, b: f64| (a + (b - a) * t) as u8;
        return RGBColor(shade(250.0, 90.0), shade(170.0, 20.0), shade(60.0, 110.0));
    }
    match name {
        "No memory" => RGBColor(120, 120, 120),
        "RAG" => RGBColor(31, 119, 180),
        "MemP" => RGBColor(23, 190, 207),
        "MemRL" => RGBColor(214, 39, 40),
        "Oracle" => RGBColor(44, 160, 44),
        "MemRL+best" => RGBColor(0, 0, 0),
        _ => RGBColor(148, 103, 189),
    }
}

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .map_err(|_| anyhow!("the bundled font could not be parsed"));
    });
    result
}

/// Writes the picture to `svg` and `png`.
pub(crate) fn learning_curves(report: &Report, svg: &Path, png: &Path) -> Result<()> {
    register_font()?;
    draw(SVGBackend::new(svg, SIZE).into_drawing_area(), report)
        .map_err(|e| anyhow!("drawing {}: {e}", svg.display()))?;
    draw(BitMapBackend::new(png, SIZE).into_drawing_area(), report)
        .map_err(|e| anyhow!("drawing {}: {e}", png.display()))?;
    Ok(())
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, report: &Report) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let config = &report.config;
    let seeds = config.seeds.len();
    let title = format!(
        "memrl simulate: {} tasks x {} epochs, {} seed{} (mean, band = 1 sd), model {}",
        config.tasks,
        config.epochs,
        seeds,
        if seeds == 1 { "" } else { "s" },
        report.model
    );
    let root = root.titled(&title, (FONT, 22))?;
    let panels = root.split_evenly((1, 2));
    let sweep: Vec<&str> = report.sweep.iter().map(|p| p.policy.as_str()).collect();
    let main: Vec<(&PolicySummary, String, RGBColor)> = report
        .policies
        .iter()
        .filter(|p| !sweep.contains(&p.policy.name.as_str()) || p.policy.name == "MemRL")
        // The best combination's own lambda sweep is in the tables, not the picture; the
        // options one by one would crowd it too, so it shows their combination only.
        .filter(|p| !p.policy.name.contains(" lambda="))
        .filter(|p| p.policy.options.is_paper() || p.policy.name == memrl_bench::simulate::BEST)
        .map(|p| {
            let label = match p.policy.name.as_str() {
                "MemP" => "MemP (= RAG: Q frozen)".to_string(),
                name => name.to_string(),
            };
            (p, label, colour(&p.policy.name, None))
        })
        .collect();
    let swept: Vec<(&PolicySummary, String, RGBColor)> = report
        .sweep
        .iter()
        .enumerate()
        .filter_map(|(i, point)| {
            let p = report.policy(&point.policy)?;
            let colour = colour(&p.policy.name, Some((i, report.sweep.len())));
            Some((p, format!("lambda = {}", point.lambda), colour))
        })
        .collect();
    panel(&panels[0], "Policies", &main, config.epochs)?;
    panel(
        &panels[1],
        "MemRL lambda sweep (alpha 0.3)",
        &swept,
        config.epochs,
    )?;
    root.present()
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    series: &[(&PolicySummary, String, RGBColor)],
    epochs: usize,
) -> DrawResult<DB> {
    let (lo, hi) = series
        .iter()
        .flat_map(|(p, _, _)| p.summary.per_epoch.iter())
        .fold((1.0f64, 0.0f64), |(lo, hi), m| {
            (lo.min(m.mean - m.std), hi.max(m.mean + m.std))
        });
    let y0 = ((lo - 0.05) * 10.0).floor().max(0.0) / 10.0;
    let y1 = ((hi + 0.05) * 10.0).ceil().min(10.0) / 10.0;
    let x1 = epochs.max(2) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 18))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(56)
        .build_cartesian_2d(0.8..x1 + 0.2, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("success rate")
        .x_labels(epochs.clamp(2, 20))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .label_style((FONT, 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (summary, label, colour) in series {
        let points: Vec<(f64, f64)> = summary
            .summary
            .per_epoch
            .iter()
            .enumerate()
            .map(|(e, m)| ((e + 1) as f64, m.mean))
            .collect();
        let band: Vec<(f64, f64)> = summary
            .summary
            .per_epoch
            .iter()
            .enumerate()
            .map(|(e, m)| ((e + 1) as f64, m.mean + m.std))
            .chain(
                summary
                    .summary
                    .per_epoch
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(e, m)| ((e + 1) as f64, m.mean - m.std)),
            )
            .collect();
        chart.draw_series(std::iter::once(Polygon::new(band, colour.mix(0.15))))?;
        let style = colour.stroke_width(2);
        let colour = *colour;
        if summary.policy.name == "MemP" {
            // MemP's picks equal RAG's, so its curve lies on RAG's: dashed, so both show.
            chart
                .draw_series(DashedLineSeries::new(points, 6, 6, colour.stroke_width(3)))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        } else {
            chart
                .draw_series(LineSeries::new(points, style).point_size(3))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
}
