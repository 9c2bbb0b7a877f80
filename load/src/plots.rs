//! SVG plots for the HTML report (plotters' SVG backend: text is emitted as SVG `<text>`, so no
//! system fonts are needed to render).

use crate::stats::SeriesPoint;
use anyhow::anyhow;
use plotters::prelude::*;

/// A line of the over-time plot: its legend, colour, and the value it draws.
const ORANGE: RGBColor = RGBColor(230, 120, 0);

type Line = (&'static str, RGBColor, fn(&SeriesPoint) -> f64);

/// Plot size in pixels, and the width of the legend column at its right (beside the data, never
/// over it).
const SIZE: (u32, u32) = (800, 300);
const LEGEND_WIDTH: u32 = 190;

/// How a legend entry is drawn.
enum Mark {
    Line(RGBColor),
    Dashed(RGBColor),
    Box(RGBColor),
}

/// The legend, in its own column right of the chart.
fn legend(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    entries: &[(String, Mark)],
) -> anyhow::Result<()> {
    let font = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, (text, mark)) in entries.iter().enumerate() {
        let y = 50 + 22 * i as i32;
        let r = match mark {
            Mark::Line(c) => area.draw(&PathElement::new(vec![(8, y), (30, y)], c.stroke_width(2))),
            Mark::Dashed(c) => area
                .draw(&PathElement::new(vec![(8, y), (15, y)], c.stroke_width(2)))
                .and_then(|_| area.draw(&PathElement::new(vec![(21, y), (30, y)], c.stroke_width(2)))),
            Mark::Box(c) => area.draw(&Rectangle::new([(8, y - 5), (30, y + 5)], c.mix(0.6).filled())),
        };
        r.map_err(|e| anyhow!("legend: {e}"))?;
        area.draw(&Text::new(text.clone(), (36, y - 7), font.clone())).map_err(|e| anyhow!("legend: {e}"))?;
    }
    Ok(())
}

/// The SLA line of a plot: its value in ms and its legend text (`SLA p99 <= 5 ms`).
pub type Limit<'a> = Option<(f64, &'a str)>;

/// The colour of threshold lines.
const LIMIT: RGBColor = RGBColor(200, 0, 0);

/// Latency distribution as bars over log-spaced buckets: `bars` are (upper edge ms, count); the
/// SLA threshold, when given, is a dashed vertical line (the axis is widened to show it).
pub fn histogram_svg(title: &str, bars: &[(f64, u64)], limit: Limit<'_>) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let whole = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        whole.fill(&WHITE).map_err(|e| anyhow!("plot {title}: {e}"))?;
        let (root, side) = whole.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let max_count = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1);
        let limit_ms = limit.map(|l| l.0).filter(|v| v.is_finite() && *v > 0.0);
        let lo =
            bars.first().map(|b| b.0 / 1.2).unwrap_or(0.001).max(0.001).min(limit_ms.map_or(f64::MAX, |l| l / 1.5));
        let hi = bars.last().map(|b| b.0 * 1.2).unwrap_or(1.0).max(lo * 10.0).max(limit_ms.map_or(0.0, |l| l * 1.5));
        let y_top = max_count + max_count / 10 + 1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), 0u64..y_top)
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log scale)")
            .y_desc("requests")
            // Few labels: a log axis with many overlaps its own text.
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|v| format_ms(*v))
            .draw()
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        let mut prev = lo;
        let rects: Vec<_> = bars
            .iter()
            .map(|&(edge, count)| {
                let r = Rectangle::new([(prev, 0), (edge, count)], BLUE.mix(0.6).filled());
                prev = edge;
                r
            })
            .collect();
        chart.draw_series(rects).map_err(|e| anyhow!("plot {title}: {e}"))?;
        let mut entries = vec![("requests per bucket".to_owned(), Mark::Box(BLUE))];
        if let (Some(ms), Some((_, text))) = (limit_ms, limit) {
            chart
                .draw_series(DashedLineSeries::new([(ms, 0), (ms, y_top)], 6, 4, LIMIT.stroke_width(2)))
                .map_err(|e| anyhow!("plot {title}: {e}"))?;
            entries.push((text.to_owned(), Mark::Dashed(LIMIT)));
        }
        legend(&side, &entries)?;
        whole.present().map_err(|e| anyhow!("plot {title}: {e}"))?;
    }
    Ok(svg)
}

/// Latency over time: per-second p50, p99 and max, and the SLA threshold as a dashed line.
pub fn over_time_svg(title: &str, series: &[SeriesPoint], limit: Limit<'_>) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let whole = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        whole.fill(&WHITE).map_err(|e| anyhow!("plot {title}: {e}"))?;
        let (root, side) = whole.split_horizontally(SIZE.0 - LEGEND_WIDTH);
        let t_max = series.iter().map(|p| p.t).max().unwrap_or(1).max(1);
        let limit_ms = limit.map(|l| l.0).filter(|v| v.is_finite() && *v > 0.0);
        let data_max = series.iter().map(|p| p.max_ms).fold(0.0, f64::max).max(0.01);
        // The threshold is shown only when it is within 20x of the data (a 500 ms floor line
        // would flatten 2 ms data to nothing); the legend then says where it is.
        let show_limit = limit_ms.filter(|l| *l <= data_max * 20.0);
        let y_max = data_max.max(show_limit.unwrap_or(0.0)) * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0u32..t_max + 1, 0f64..y_max)
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds into the phase")
            .y_desc("latency (ms)")
            .x_labels(8)
            .y_labels(6)
            .y_label_formatter(&|v| format_ms(*v))
            .draw()
            .map_err(|e| anyhow!("plot {title}: {e}"))?;
        let lines: [Line; 3] =
            [("p50", GREEN, |p| p.p50_ms), ("p99", BLUE, |p| p.p99_ms), ("max", ORANGE, |p| p.max_ms)];
        let mut entries = Vec::new();
        for (name, color, value) in lines {
            chart
                .draw_series(LineSeries::new(series.iter().map(|p| (p.t, value(p))), color.stroke_width(2)))
                .map_err(|e| anyhow!("plot {title}: {e}"))?;
            entries.push((format!("{name} per second"), Mark::Line(color)));
        }
        if let Some((_, text)) = limit.filter(|_| limit_ms.is_some()) {
            match show_limit {
                Some(y) => {
                    chart
                        .draw_series(DashedLineSeries::new([(0, y), (t_max + 1, y)], 6, 4, LIMIT.stroke_width(2)))
                        .map_err(|e| anyhow!("plot {title}: {e}"))?;
                    entries.push((text.to_owned(), Mark::Dashed(LIMIT)));
                }
                None => entries.push((format!("{text} (far above: not drawn)"), Mark::Dashed(LIMIT))),
            }
        }
        legend(&side, &entries)?;
        whole.present().map_err(|e| anyhow!("plot {title}: {e}"))?;
    }
    Ok(svg)
}

/// `0.25`, `3.2`, `1200`: enough digits to read an axis.
fn format_ms(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_render_to_svg_without_fonts() {
        let h = histogram_svg("h", &[(0.5, 3), (1.0, 10), (2.0, 1)], Some((5.0, "SLA p99 <= 5 ms"))).unwrap();
        assert!(h.starts_with("<svg") && h.contains("<rect") && h.contains("<text"), "{h}");
        assert!(h.contains("latency (ms, log scale)"), "axis label rendered as text");
        assert!(h.contains("SLA p99 &lt;= 5 ms") || h.contains("SLA p99 <= 5 ms"), "threshold in the legend: {h}");
        let s = [
            SeriesPoint { t: 0, count: 1, p50_ms: 1.0, p99_ms: 2.0, max_ms: 3.0 },
            SeriesPoint { t: 1, count: 1, p50_ms: 1.0, p99_ms: 2.5, max_ms: 4.0 },
        ];
        let t = over_time_svg("t", &s, Some((5.0, "SLA p99 <= 5 ms"))).unwrap();
        assert!(t.contains("<polyline") || t.contains("<path"), "line drawn");
        assert!(t.contains("SLA p99"), "threshold line labelled");
        let far = over_time_svg("t", &s, Some((500.0, "SLA p99 <= 500 ms"))).unwrap();
        assert!(far.contains("far above: not drawn"), "a far threshold is named, not drawn");
        // Empty inputs still give a valid (empty) chart rather than an error.
        assert!(histogram_svg("e", &[], None).unwrap().starts_with("<svg"));
        assert!(over_time_svg("e", &[], None).unwrap().starts_with("<svg"));
        if let Some(dir) = std::env::var_os("LOAD_PLOT_SAMPLES") {
            let bars: Vec<(f64, u64)> =
                (0..40).map(|i| (0.05 * 1.25f64.powi(i), (40 - (i - 15).abs()) as u64 * 30)).collect();
            let series: Vec<SeriesPoint> = (0..30)
                .map(|t| SeriesPoint {
                    t,
                    count: 100,
                    p50_ms: 1.0 + (t % 3) as f64,
                    p99_ms: 3.5 + (t % 5) as f64,
                    max_ms: 6.0 + (t % 7) as f64,
                })
                .collect();
            let html = format!(
                "<html><body>{}{}</body></html>",
                histogram_svg("rest: all: distribution", &bars, Some((5.0, "SLA rest_p99: p99 <= 5 ms"))).unwrap(),
                over_time_svg("rest: all: over time", &series, Some((5.0, "SLA rest_p99: p99 <= 5 ms"))).unwrap()
            );
            std::fs::write(std::path::Path::new(&dir).join("plots.html"), html).unwrap();
        }
    }
}
