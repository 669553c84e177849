//! SVG plots of results, drawn with plotters' SVG backend.
//!
//! Two kinds: a latency percentile plot (the inverse CDF with the tail
//! stretched: x is the percentile on a log scale of 1/(1-p), so 90 %, 99 %,
//! 99.9 % … are evenly spaced; y is the latency on a log scale), one line
//! per target; and latency against offered load, p50 and p99 per target.
//! Both read [`Dist`]s (their `spectrum`), so they can be redrawn from a
//! result file. Text is left to the SVG viewer's sans-serif font: plotters
//! is built without a font backend, so no system font library is needed.

use std::path::Path;

use plotters::prelude::*;

use crate::load::Dist;

/// Series colours, in target order: grey for the first (direct), then
/// well-separated hues.
const PALETTE: [RGBColor; 8] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// Highest percentile shown: 99.999 %.
const TAIL_DECADES: f64 = 5.0;

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Percentile `p` (0..100) as a position on the stretched axis.
fn tail_x(p: f64) -> f64 {
    if p >= 100.0 {
        return TAIL_DECADES;
    }
    (-(1.0 - p / 100.0).log10()).min(TAIL_DECADES)
}

fn tail_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if x < 0.5 {
        "0%".to_owned()
    } else if (p - p.round()).abs() < 1e-6 {
        format!("{p:.0}%")
    } else {
        let digits = (x.round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    }
}

fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (1.0, 10.0);
    }
    // Whole decades around the data, so log ticks land on round numbers.
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// An axis label for a time given in microseconds: `50 µs`, `2 ms`, `1 s`.
fn time_label(v: f64) -> String {
    let (x, unit) = if v >= 1e6 {
        (v / 1e6, "s")
    } else if v >= 1e3 {
        (v / 1e3, "ms")
    } else {
        (v, "µs")
    };
    let x = if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    };
    format!("{x} {unit}")
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// Latency by percentile, one line per `(name, dist)`; the dists' values
/// are microseconds.
pub fn percentiles(path: &Path, title: &str, series: &[(String, &Dist)]) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, d)| {
            d.spectrum
                .iter()
                .filter(|[p, v]| *p < 100.0 && *v > 0.0)
                .map(|[p, v]| (tail_x(*p), *v))
                .collect()
        })
        .collect();
    let (lo, hi) = log_range(points.iter().flatten().map(|(_, v)| *v));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..TAIL_DECADES, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(TAIL_DECADES as usize + 1)
        .x_label_formatter(&|x| tail_label(*x))
        .x_desc("percentile")
        .y_desc("latency")
        .y_label_formatter(&|y| time_label(*y))
        .draw()
        .map_err(err)?;
    for (i, ((name, _), pts)) in series.iter().zip(&points).enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// One target's latency at each offered load: `(offered req/s, p50, p99)`.
pub struct LoadSeries {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Latency (µs) against offered load: p50 solid, p99 dashed, one colour
/// per target.
pub fn latency_vs_load(path: &Path, title: &str, series: &[LoadSeries]) -> Result<(), String> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max) * 1.05;
    let (lo, hi) = log_range(all.flat_map(|p| [p.1, p.2]));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max.max(1.0), (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered load (requests/s)")
        .y_desc("latency: solid p50, dashed p99")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| time_label(*y))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        let p50: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.1)).collect();
        let p99: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0, p.2)).collect();
        chart
            .draw_series(LineSeries::new(p50.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(p50.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(
                p99.iter().copied(),
                6,
                4,
                c.stroke_width(2),
            ))
            .map_err(err)?;
        chart
            .draw_series(p99.iter().map(|p| Circle::new(*p, 3, c.stroke_width(1))))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::Dist;

    #[test]
    fn tail_axis_labels() {
        let labels: Vec<String> = (0..=5).map(|x| tail_label(f64::from(x))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert!((tail_x(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(tail_x(100.0), TAIL_DECADES);
        assert_eq!(time_label(50.0), "50 µs");
        assert_eq!(time_label(2500.0), "2.5 ms");
        assert_eq!(time_label(1e6), "1 s");
    }

    #[test]
    fn plots_are_written_as_svg() {
        let dir = std::env::temp_dir().join(format!("sluice-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = Dist {
            count: 3,
            spectrum: vec![[0.0, 20.0], [90.0, 40.0], [99.0, 90.0], [100.0, 120.0]],
            ..Dist::default()
        };
        let path = dir.join("cdf.svg");
        percentiles(&path, "t", &[("direct".into(), &d), ("sluice".into(), &d)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("sluice") && svg.contains("99.9%"));
        let path = dir.join("load.svg");
        let s = LoadSeries {
            name: "nginx".into(),
            points: vec![(100.0, 50.0, 80.0), (200.0, 60.0, 300.0)],
        };
        latency_vs_load(&path, "t", &[s]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("nginx") && svg.contains("offered load"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
