//! The report's inline SVG: a rate bar, an error-rate line chart per producer and confusion
//! heatmaps. Plain SVG elements through maud, so every label is escaped like the rest of the page.

use std::collections::BTreeMap;

use maud::{html, Markup};

use crate::record::Tally;
use crate::views::sink::timestamp;

/// The top of a rate axis that holds `highest`: a round 10%, 20%, ... 100%, so that it reads well.
pub fn rate_scale(highest: f64) -> f64 {
    ((highest * 10.0).ceil() / 10.0).clamp(0.1, 1.0)
}

/// A horizontal bar for a rate on a scale from 0 to `scale`, with a tick at the overall rate.
pub fn rate_bar(rate: Option<f64>, overall: Option<f64>, scale: f64) -> Markup {
    const WIDTH: f64 = 120.0;
    let x = |rate: f64| px(rate.min(scale) / scale * WIDTH);
    html! {
        svg.bar width=(WIDTH) height="12" viewBox={ "0 0 " (WIDTH) " 12" } role="img" {
            rect.track x="0" y="1" width=(WIDTH) height="10" {}
            @if let Some(rate) = rate {
                rect.rate x="0" y="1" width=(x(rate)) height="10" {}
            }
            @if let Some(overall) = overall {
                line.overall x1=(x(overall)) x2=(x(overall)) y1="0" y2="12" {}
            }
        }
    }
}

/// The time range every producer's chart shares, so that small multiples line up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimeAxis {
    pub first: i64,
    pub last: i64,
    pub width_ms: i64,
    /// The top of the rate axis, the same for every chart.
    pub rate_max: f64,
}

impl TimeAxis {
    /// The axis over every window in `windows`; `None` when there is none.
    pub fn of(windows: &BTreeMap<(String, i64), Tally>, width_ms: i64) -> Option<TimeAxis> {
        let first = windows.keys().map(|(_, window)| *window).min()?;
        let last = windows.keys().map(|(_, window)| *window).max()?;
        let highest = windows.values().filter_map(Tally::error_rate).fold(0.0, f64::max);
        Some(TimeAxis { first, last, width_ms, rate_max: rate_scale(highest) })
    }
}

/// Beyond this many windows a chart has no dot per window (they would merge, and make a page of
/// 100 producers over months tens of megabytes); a window between two gaps keeps its dot.
const DOTS_UP_TO: usize = 150;
const CHART_WIDTH: f64 = 260.0;
const CHART_HEIGHT: f64 = 90.0;
const PLOT_LEFT: f64 = 34.0;
const PLOT_RIGHT: f64 = 252.0;
const PLOT_TOP: f64 = 6.0;
const PLOT_BOTTOM: f64 = 72.0;

/// One producer's error rate per window (sorted by window): a line through adjacent windows,
/// broken where a window has no judged record, a dot per window (with its figures on hover), and
/// the overall rate dashed.
pub fn error_rate_chart(windows: &[(i64, Tally)], axis: &TimeAxis, overall: Option<f64>) -> Markup {
    let x = |window: i64| {
        let span = (axis.last - axis.first) as f64;
        if span == 0.0 {
            (PLOT_LEFT + PLOT_RIGHT) / 2.0
        } else {
            PLOT_LEFT + (window - axis.first) as f64 / span * (PLOT_RIGHT - PLOT_LEFT)
        }
    };
    let y = |rate: f64| PLOT_BOTTOM - rate.min(axis.rate_max) / axis.rate_max * (PLOT_BOTTOM - PLOT_TOP);
    let judged: Vec<(i64, Tally, f64)> =
        windows.iter().filter_map(|(window, tally)| Some((*window, *tally, tally.error_rate()?))).collect();
    html! {
        svg.chart width=(CHART_WIDTH) height=(CHART_HEIGHT) viewBox={ "0 0 " (CHART_WIDTH) " " (CHART_HEIGHT) } role="img" {
            line.axis x1=(PLOT_LEFT) x2=(PLOT_RIGHT) y1=(PLOT_BOTTOM) y2=(PLOT_BOTTOM) {}
            line.axis x1=(PLOT_LEFT) x2=(PLOT_LEFT) y1=(PLOT_TOP) y2=(PLOT_BOTTOM) {}
            text.tick x=(PLOT_LEFT - 3.0) y=(PLOT_BOTTOM) text-anchor="end" { "0%" }
            text.tick x=(PLOT_LEFT - 3.0) y=(PLOT_TOP + 8.0) text-anchor="end" { (percent(axis.rate_max, 0)) }
            text.tick x=(PLOT_LEFT) y=(CHART_HEIGHT - 4.0) text-anchor="start" { (day_and_time(axis.first)) }
            text.tick x=(PLOT_RIGHT) y=(CHART_HEIGHT - 4.0) text-anchor="end" { (day_and_time(axis.last)) }
            @if let Some(overall) = overall {
                line.overall x1=(PLOT_LEFT) x2=(PLOT_RIGHT) y1=(px(y(overall))) y2=(px(y(overall))) {
                    title { "overall error rate " (percent(overall, 2)) }
                }
            }
            @for run in runs(&judged, axis.width_ms) {
                @if run.len() > 1 {
                    polyline.series points=(points(run.iter().map(|(w, _, rate)| (x(*w), y(*rate))))) {}
                }
                @if run.len() == 1 || judged.len() <= DOTS_UP_TO {
                    @for (window, tally, rate) in run {
                        circle.point cx=(px(x(*window))) cy=(px(y(*rate))) r="2.2" {
                            title { (timestamp(*window)) ": " (percent(*rate, 2)) " (" (tally.incorrect) " of " (tally.judged()) ")" }
                        }
                    }
                }
            }
        }
    }
}

/// Splits windows into runs of adjacent ones: a line never bridges a window without records.
pub fn runs<T>(windows: &[(i64, Tally, T)], width_ms: i64) -> Vec<&[(i64, Tally, T)]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=windows.len() {
        if i == windows.len() || windows[i].0 != windows[i - 1].0.saturating_add(width_ms) {
            runs.push(&windows[start..i]);
            start = i;
        }
    }
    runs.retain(|run| !run.is_empty());
    runs
}

/// A confusion matrix cut to the classes with the most support; the rest summed as one.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    /// Row and column labels in order; `None` is every class beyond the cap.
    pub classes: Vec<Option<String>>,
    /// `counts[truth][inferred]`.
    pub counts: Vec<Vec<u64>>,
    /// How many classes `None` stands for (0: no such row).
    pub others: usize,
}

impl Matrix {
    /// The `top` classes by support (records whose truth is the class; ties by labels given, then
    /// name), every other class summed into a last "other" row and column.
    pub fn capped<'a>(cells: impl IntoIterator<Item = (&'a str, &'a str, u64)> + Clone, top: usize) -> Matrix {
        let mut weight = BTreeMap::<&str, (u64, u64)>::new();
        for (truth, inferred, count) in cells.clone() {
            weight.entry(truth).or_default().0 += count;
            weight.entry(inferred).or_default().1 += count;
        }
        let mut ranked: Vec<(&str, (u64, u64))> = weight.into_iter().collect();
        ranked.sort_by(|(a, wa), (b, wb)| wb.cmp(wa).then(a.cmp(b)));
        let top = top.max(1);
        let others = ranked.len().saturating_sub(top);
        let kept: Vec<&str> = ranked.iter().take(top).map(|(class, _)| *class).collect();
        let mut classes: Vec<Option<String>> = kept.iter().map(|class| Some(class.to_string())).collect();
        if others > 0 {
            classes.push(None);
        }
        let index = |class: &str| kept.iter().position(|k| *k == class).unwrap_or(kept.len());
        let mut counts = vec![vec![0; classes.len()]; classes.len()];
        for (truth, inferred, count) in cells {
            counts[index(truth)][index(inferred)] += count;
        }
        Matrix { classes, counts, others }
    }

    /// Row `truth`, column `inferred`: right on the diagonal, except where both are "others".
    pub fn hue(&self, truth: usize, inferred: usize) -> Hue {
        match (truth == inferred, &self.classes[truth]) {
            (false, _) => Hue::Wrong,
            (true, Some(_)) => Hue::Right,
            (true, None) => Hue::Mixed,
        }
    }

    /// The `i`-th row's name; the classes beyond the cap in parentheses, to tell them from a class.
    pub fn label(&self, i: usize) -> String {
        match &self.classes[i] {
            Some(class) => class.clone(),
            None => format!("({} others)", self.others),
        }
    }
}

const CELL: f64 = 30.0;
const LABEL_CHARS: usize = 22;

/// A heatmap: rows are the true class, columns the label given; a cell's shade is its share of
/// the row (blue on the diagonal, red off it), its number the count.
pub fn heatmap(matrix: &Matrix) -> Markup {
    let labels: Vec<(String, String)> =
        (0..matrix.classes.len()).map(|i| (matrix.label(i), short(&matrix.label(i)))).collect();
    let longest = labels.iter().map(|(_, short)| short.chars().count()).max().unwrap_or(0);
    let margin = 16.0 + 6.5 * longest as f64;
    let n = matrix.classes.len() as f64;
    // Column labels lean right by half their length.
    let (width, height) = (margin * 1.5 + n * CELL, margin + n * CELL + 4.0);
    html! {
        svg.heatmap width=(px(width)) height=(px(height)) viewBox={ "0 0 " (px(width)) " " (px(height)) } role="img" {
            @for (i, (full, short)) in labels.iter().enumerate() {
                @let middle = margin + (i as f64 + 0.5) * CELL;
                text.label x=(px(margin - 4.0)) y=(px(middle + 4.0)) text-anchor="end" { title { (full) } (short) }
                text.label x=(px(middle)) y=(px(margin - 4.0)) transform={ "rotate(-60 " (px(middle)) " " (px(margin - 4.0)) ")" } {
                    title { (full) } (short)
                }
            }
            // Empty cells are the background: most of a large matrix is empty.
            rect.grid x=(px(margin)) y=(px(margin)) width=(px(n * CELL)) height=(px(n * CELL)) {}
            @for (i, row) in matrix.counts.iter().enumerate() {
                @let row_total: u64 = row.iter().sum();
                @for (j, count) in row.iter().enumerate().filter(|(_, count)| **count > 0) {
                    @let share = *count as f64 / row_total as f64;
                    @let (x, y) = (margin + j as f64 * CELL, margin + i as f64 * CELL);
                    rect x=(px(x)) y=(px(y)) width=(CELL) height=(CELL) fill=(shade(share, matrix.hue(i, j))) {
                        title {
                            "truth " (labels[i].0) ", labelled " (labels[j].0) ": " (count)
                            " (" (percent(share, 1)) " of the row)"
                        }
                    }
                    text.count x=(px(x + CELL / 2.0)) y=(px(y + CELL / 2.0 + 4.0)) text-anchor="middle"
                        fill=(if share > 0.55 { "#fff" } else { "#222" }) { (compact(*count)) }
                }
            }
        }
    }
}

/// A label as the heatmap shows it: at most [`LABEL_CHARS`] characters.
fn short(name: &str) -> String {
    if name.chars().count() <= LABEL_CHARS {
        return name.to_owned();
    }
    name.chars().take(LABEL_CHARS - 1).chain(['…']).collect()
}

/// What a cell's records are, which its colour says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hue {
    Right,
    Wrong,
    /// The other classes labelled as other classes: some right, some wrong.
    Mixed,
}

/// White to blue (right), red (wrong) or grey (mixed) by share.
fn shade(share: f64, hue: Hue) -> String {
    let (r, g, b) = match hue {
        Hue::Right => (33.0, 102.0, 172.0),
        Hue::Wrong => (178.0, 24.0, 43.0),
        Hue::Mixed => (110.0, 110.0, 110.0),
    };
    let mix = |c: f64| (255.0 - (255.0 - c) * share).round() as u8;
    format!("rgb({},{},{})", mix(r), mix(g), mix(b))
}

/// A count that fits a cell: 999, 1.2k, 35k, 1.2M.
fn compact(count: u64) -> String {
    match count {
        0..1_000 => count.to_string(),
        1_000..10_000 => format!("{:.1}k", count as f64 / 1e3),
        10_000..1_000_000 => format!("{}k", count / 1_000),
        _ => format!("{:.1}M", count as f64 / 1e6),
    }
}

/// A rate as a percentage with `decimals` digits.
pub fn percent(rate: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, rate * 100.0)
}

/// A coordinate with one decimal: enough for a screen, and short.
fn px(value: f64) -> String {
    format!("{value:.1}")
}

fn points(points: impl Iterator<Item = (f64, f64)>) -> String {
    points.map(|(x, y)| format!("{},{}", px(x), px(y))).collect::<Vec<_>>().join(" ")
}

/// `2026-11-30 14:00` from a window start.
fn day_and_time(ms: i64) -> String {
    let stamp = timestamp(ms);
    stamp.get(..16).map(|s| s.replacen('T', " ", 1)).unwrap_or(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(correct: u64, incorrect: u64) -> Tally {
        Tally { correct, incorrect, pending: 0 }
    }

    #[test]
    fn lines_break_where_a_window_has_no_judged_records() {
        let windows: Vec<(i64, Tally, ())> = [0, 10, 20, 40, 60, 70].iter().map(|w| (*w, tally(1, 1), ())).collect();
        let runs: Vec<Vec<i64>> = runs(&windows, 10).iter().map(|run| run.iter().map(|w| w.0).collect()).collect();
        assert_eq!(runs, [vec![0, 10, 20], vec![40], vec![60, 70]]);
        assert!(super::runs::<()>(&[], 10).is_empty());
    }

    #[test]
    fn the_chart_draws_one_line_per_run_and_a_dot_per_window() {
        let axis = TimeAxis { first: 0, last: 40, width_ms: 10, rate_max: 1.0 };
        let windows = [(0, tally(3, 1)), (10, tally(1, 1)), (30, tally(0, 2)), (40, Tally::default())];
        let svg = error_rate_chart(&windows, &axis, Some(0.5)).into_string();
        // 0-10 is a line; 30 stands alone (20 has no records); 40 has nothing judged: no dot.
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(svg.contains("25.00% (1 of 4)"), "{svg}");
        assert!(svg.contains("overall error rate 50.00%"), "{svg}");
    }

    #[test]
    fn a_chart_of_many_windows_keeps_dots_only_for_windows_between_gaps() {
        let mut windows: Vec<(i64, Tally)> = (0..200).map(|w| (w * 10, tally(3, 1))).collect();
        windows.push((3000, tally(1, 1)));
        let axis = TimeAxis { first: 0, last: 3000, width_ms: 10, rate_max: 1.0 };
        let svg = error_rate_chart(&windows, &axis, None).into_string();
        assert_eq!((svg.matches("<polyline").count(), svg.matches("<circle").count()), (1, 1), "{svg}");
        assert!(svg.contains("50.00% (1 of 2)"));
    }

    #[test]
    fn bars_share_a_round_scale() {
        assert_eq!([rate_scale(0.0), rate_scale(0.04), rate_scale(0.31), rate_scale(1.0)], [0.1, 0.1, 0.4, 1.0]);
        let bar = rate_bar(Some(0.2), Some(0.1), 0.4).into_string();
        assert!(bar.contains("class=\"rate\" x=\"0\" y=\"1\" width=\"60.0\""), "{bar}");
        assert!(bar.contains("x1=\"30.0\""), "{bar}");
    }

    #[test]
    fn the_heatmap_keeps_the_top_classes_by_support_and_sums_the_rest_as_other() {
        let cells = [
            ("cat", "cat", 50),
            ("cat", "dog", 5),
            ("dog", "dog", 30),
            ("fox", "cat", 4),
            ("owl", "owl", 2),
            ("owl", "emu", 1),
        ];
        let matrix = Matrix::capped(cells, 2);
        assert_eq!(matrix.classes, [Some("cat".to_owned()), Some("dog".to_owned()), None]);
        assert_eq!(matrix.others, 3, "fox, owl and emu (never a truth)");
        assert_eq!(matrix.counts, [vec![50, 5, 0], vec![0, 30, 0], vec![4, 0, 3]]);
        let total: u64 = matrix.counts.iter().flatten().sum();
        assert_eq!(total, 92, "nothing is lost to the cap");
        assert_eq!(matrix.label(2), "(3 others)");
        assert_eq!(
            [matrix.hue(0, 0), matrix.hue(0, 1), matrix.hue(2, 0), matrix.hue(2, 2)],
            [Hue::Right, Hue::Wrong, Hue::Wrong, Hue::Mixed]
        );
        let svg = heatmap(&matrix).into_string();
        assert!(svg.contains("<title>truth (3 others), labelled cat: 4 (57.1% of the row)</title>"), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 1 + 5, "the background and the five cells with records: {svg}");
        let uncapped = Matrix::capped(cells, 10);
        assert_eq!((uncapped.classes.len(), uncapped.others), (5, 0));
    }

    #[test]
    fn heatmap_labels_are_escaped_and_shortened() {
        let long = "a <very> long & \"quoted\" class, name";
        let matrix = Matrix::capped([(long, "x", 1)], 5);
        let svg = heatmap(&matrix).into_string();
        assert!(!svg.contains("<very>"), "{svg}");
        assert!(
            svg.contains("a &lt;very&gt; long &amp; &quot;quoted&quot; class, name"),
            "full name in a title: {svg}"
        );
        assert!(
            svg.contains("</title>a &lt;very&gt; long &amp; &quot;quot…</text>"),
            "shortened to 22 characters: {svg}"
        );
    }

    #[test]
    fn compact_counts() {
        assert_eq!([compact(7), compact(1234), compact(56_789), compact(2_500_000)], ["7", "1.2k", "56k", "2.5M"]);
    }
}
