//! `dataflow report`: the monitoring views as one self-contained HTML page (inline CSS and SVG,
//! no script, nothing fetched), rendered by pure functions from the batch job's [`Outcome`].
//!
//! Sections: a header (source, as of, record counts), producers sorted by error rate, the error
//! rate per window of each producer as small multiples, label drift, the confusion heatmap and
//! per-class scores over all producers, then each producer's in a collapsible `<details>`.

pub mod charts;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::job::Outcome;
use crate::record::Tally;
use crate::views::confusion::{class_scores, ClassScore, Scope};
use crate::views::drift::LabelDrift;
use crate::views::sink::timestamp;
use crate::views::Snapshot;
use charts::{error_rate_chart, heatmap, percent, rate_bar, rate_scale, Matrix, TimeAxis};

/// What the page says besides the outcome.
#[derive(Clone, Debug)]
pub struct ReportContext {
    /// Where the records came from (a connection string without its password).
    pub source: String,
    /// RFC 3339: the report counts every write made before this time.
    pub as_of: String,
    /// The width of the windows of `InferredAt`.
    pub window_ms: i64,
    /// A drift is flagged below this p-value.
    pub drift_alpha: f64,
    /// Classes each heatmap shows; the rest are summed as "other".
    pub top_classes: usize,
}

/// The whole page.
pub fn render(outcome: &Outcome, context: &ReportContext) -> String {
    let empty = Snapshot::default();
    let snapshot = outcome.views.as_ref().unwrap_or(&empty);
    let producers = by_error_rate(&outcome.table);
    let overall = outcome.total().error_rate();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Inference errors as of " (context.as_of) }
                style { (PreEscaped(STYLE)) }
                script { (PreEscaped(SORT_SCRIPT)) }
            }
            body {
                (header(outcome, context))
                (producer_table(&producers, overall))
                (time_series(&producers, snapshot, context, overall))
                (drift_table(&producers, snapshot, context.drift_alpha))
                (overall_section(snapshot, context.top_classes))
                (per_producer(&producers, snapshot, context.top_classes))
            }
        }
    };
    page.into_string()
}

/// Producers by error rate, highest first; those with nothing judged last; ties by name.
fn by_error_rate(table: &BTreeMap<String, Tally>) -> Vec<(&str, Tally)> {
    let mut producers: Vec<(&str, Tally)> = table.iter().map(|(name, tally)| (name.as_str(), *tally)).collect();
    producers.sort_by(|(a, ta), (b, tb)| match (ta.error_rate(), tb.error_rate()) {
        (Some(ra), Some(rb)) => rb.total_cmp(&ra).then(a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    });
    producers
}

/// The anchor of the `rank`-th producer's section: names are not valid ids.
fn anchor(rank: usize) -> String {
    format!("p-{rank}")
}

fn rate(tally: &Tally) -> String {
    tally.error_rate().map_or_else(|| "–".to_owned(), |rate| percent(rate, 2))
}

fn header(outcome: &Outcome, context: &ReportContext) -> Markup {
    let total = outcome.total();
    let stats = &outcome.stats;
    let figures = [
        ("producers", outcome.table.len() as u64),
        ("records", total.judged() + total.pending),
        ("judged", total.judged()),
        ("wrong", total.incorrect),
        ("pending", total.pending),
        ("malformed", stats.skipped),
        ("untimed", stats.untimed),
        ("deleted", stats.deleted),
    ];
    html! {
        header {
            h1 { "Inference errors" }
            p.meta {
                "Source " code { (context.source) } " · as of " time datetime=(context.as_of) { (context.as_of) }
                " · windows of " (humantime::format_duration(std::time::Duration::from_millis(context.window_ms.max(0) as u64)))
            }
            dl.figures {
                div { dt { "error rate" } dd #overall-rate { (rate(&total)) } }
                @for (name, value) in figures {
                    div { dt { (name) } dd id={ "figure-" (name) } { (value) } }
                }
            }
            @if stats.untimed > 0 {
                p.note { (stats.untimed) " inferred record(s) have no readable InferredAt: counted, and in the confusion counts, but in no window." }
            }
            @if stats.skipped > 0 {
                details.note {
                    summary { (stats.skipped) " malformed record(s) skipped; the first few:" }
                    ul { @for example in &stats.skipped_examples { li { code { (example) } } } }
                }
            }
        }
    }
}

fn producer_table(producers: &[(&str, Tally)], overall: Option<f64>) -> Markup {
    let scale = rate_scale(producers.iter().filter_map(|(_, tally)| tally.error_rate()).fold(0.0, f64::max));
    html! {
        section #producers {
            h2 { "Producers by error rate" }
            p.note {
                "Error rate = wrong / judged records. The bars span 0 to " (percent(scale, 0))
                "; the tick on each is the overall rate. Click a column's heading to sort by it."
            }
            table.sortable {
                thead { tr { th { "Producer" } th.num { "judged" } th.num { "wrong" } th.num { "pending" } th.num { "error rate" } th {} } }
                tbody {
                    @for (rank, (name, tally)) in producers.iter().enumerate() {
                        tr data-producer=(name) {
                            th scope="row" { a href={ "#" (anchor(rank)) } { (name) } }
                            td.num { (tally.judged()) }
                            td.num { (tally.incorrect) }
                            td.num { (tally.pending) }
                            td.num data-sort=(tally.error_rate().unwrap_or(-1.0)) { (rate(tally)) }
                            td { (rate_bar(tally.error_rate(), overall, scale)) }
                        }
                    }
                }
            }
        }
    }
}

fn time_series(
    producers: &[(&str, Tally)],
    snapshot: &Snapshot,
    context: &ReportContext,
    overall: Option<f64>,
) -> Markup {
    let mut per_producer = BTreeMap::<&str, Vec<(i64, Tally)>>::new();
    for ((producer, window), tally) in &snapshot.windows {
        per_producer.entry(producer.as_str()).or_default().push((*window, *tally));
    }
    html! {
        section #time-series {
            h2 { "Error rate per window" }
            @match TimeAxis::of(&snapshot.windows, context.window_ms) {
                None => p.note { "No inferred record has a readable InferredAt: there is no window to plot." },
                Some(axis) => {
                    p.note {
                        "One window per dot; a line joins adjacent windows and breaks where a window has no judged record. "
                        "Dashed: the overall error rate. Every chart shares its axes."
                    }
                    div.multiples {
                        @for (name, _) in producers {
                            figure {
                                figcaption { (name) }
                                @match per_producer.get(name) {
                                    Some(windows) => (error_rate_chart(windows, &axis, overall)),
                                    None => p.note { "no judged record with a time" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn drift_table(producers: &[(&str, Tally)], snapshot: &Snapshot, alpha: f64) -> Markup {
    // Most significant first; producers whose latest window is still their reference last.
    let mut rows: Vec<(&str, &LabelDrift)> =
        producers.iter().filter_map(|(name, _)| snapshot.drift.get(*name).map(|drift| (*name, drift))).collect();
    let significance = |drift: &LabelDrift| drift.statistics().map_or(f64::INFINITY, |s| s.p_value);
    rows.sort_by(|(a, da), (b, db)| significance(da).total_cmp(&significance(db)).then(a.cmp(b)));
    html! {
        section #drift {
            h2 { "Predicted-label drift" }
            p.note {
                "Each producer's labels in its latest window against its reference: a chi-square test "
                "(drifted when p < " (alpha) ") and the Hellinger distance (0: same, 1: disjoint)."
            }
            @if rows.is_empty() {
                p.note { "No producer has a window of inferred records." }
            } @else {
                table.sortable {
                    thead { tr {
                        th { "Producer" } th { "reference" } th.num { "labels" } th { "latest window" } th.num { "labels" }
                        th.num { "χ²" } th.num { "df" } th.num { "p-value" } th.num { "Hellinger" } th { "" }
                    } }
                    tbody { @for (name, drift) in rows { (drift_row(name, drift, alpha)) } }
                }
            }
        }
    }
}

fn drift_row(name: &str, drift: &LabelDrift, alpha: f64) -> Markup {
    let stats = drift.statistics();
    let drifted = stats.is_some_and(|s| s.p_value < alpha);
    html! {
        tr class=[drifted.then_some("drifted")] data-producer=(name) {
            th scope="row" { (name) }
            td { @match drift.reference_period {
                Some((start, end)) => { (timestamp(start)) " to " (timestamp(end)) },
                None => "fixed (--reference-file)",
            } }
            td.num { (drift.reference.values().sum::<u64>()) }
            td { (timestamp(drift.window_start)) }
            td.num { (drift.window.values().sum::<u64>()) }
            @match stats {
                Some(s) => {
                    td.num { (format!("{:.2}", s.chi_square)) }
                    td.num { (s.degrees_of_freedom) }
                    td.num { (p_value(s.p_value)) }
                    td.num { (format!("{:.3}", s.hellinger)) }
                    td { @if drifted { strong { "drifted" } } @else { "ok" } }
                }
                None => td colspan="5" { "latest window still in the reference period" },
            }
        }
    }
}

/// Four decimals, or scientific notation below 0.001, where the decimals would all be zero.
fn p_value(p: f64) -> String {
    if p >= 0.001 {
        format!("{p:.4}")
    } else {
        format!("{p:.2e}")
    }
}

fn overall_section(snapshot: &Snapshot, top: usize) -> Markup {
    html! {
        section #all-producers {
            h2 { "All producers: confusion and per-class scores" }
            (confusion_and_classes(snapshot, &Scope::All, top))
        }
    }
}

fn per_producer(producers: &[(&str, Tally)], snapshot: &Snapshot, top: usize) -> Markup {
    html! {
        section #per-producer {
            h2 { "Per producer" }
            p.note { "Click a producer to open its confusion heatmap and per-class scores." }
            @for (rank, (name, tally)) in producers.iter().enumerate() {
                details id=(anchor(rank)) {
                    summary { strong { (name) } " · " (rate(tally)) " (" (tally.incorrect) " wrong of " (tally.judged()) " judged, " (tally.pending) " pending)" }
                    (confusion_and_classes(snapshot, &Scope::Producer(name.to_string()), top))
                }
            }
        }
    }
}

fn confusion_and_classes(snapshot: &Snapshot, scope: &Scope, top: usize) -> Markup {
    let cells: Vec<(&str, &str, u64)> = snapshot.confusion_of(scope).collect();
    if cells.is_empty() {
        return html! { p.note { "No judged record." } };
    }
    let matrix = Matrix::capped(cells.iter().copied(), top);
    let mut scores = class_scores(cells.iter().copied());
    scores.sort_by(|a, b| b.support.cmp(&a.support).then(a.class.cmp(&b.class)));
    html! {
        div.pair {
            figure {
                figcaption {
                    "Rows: true class; columns: label given; shade: share of the row, blue right, red wrong."
                    @if matrix.others > 0 {
                        " The " (matrix.classes.len() - 1) " classes with the most support are shown; the other "
                        (matrix.others) " are summed as “(" (matrix.others) " others)”, grey where labelled as one another."
                    }
                }
                (heatmap(&matrix))
            }
            (class_table(&scores))
        }
    }
}

fn class_table(scores: &[ClassScore]) -> Markup {
    let ratio = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"));
    html! {
        table.classes.sortable {
            thead { tr {
                th { "class" } th.num { "support" } th.num { "labelled" } th.num { "right" }
                th.num { "precision" } th.num { "recall" } th.num { "F1" }
            } }
            tbody {
                @for score in scores {
                    tr {
                        th scope="row" { (score.class) }
                        td.num { (score.support) } td.num { (score.predicted) } td.num { (score.correct) }
                        td.num { (ratio(score.precision())) } td.num { (ratio(score.recall())) } td.num { (ratio(score.f1())) }
                    }
                }
            }
        }
    }
}

/// Sorts a `table.sortable` by the column whose heading is clicked, descending first; numbers
/// as numbers (a cell's `data-sort` when it has one). The page reads the same without it.
const SORT_SCRIPT: &str = r#"
document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.sortable")) {
    table.querySelectorAll("thead th").forEach((heading, column) => {
      heading.addEventListener("click", () => {
        const key = (row) => {
          const cell = row.cells[column];
          const text = cell ? (cell.dataset.sort ?? cell.textContent) : "";
          const number = parseFloat(text);
          return isNaN(number) ? text : number;
        };
        const descending = heading.dataset.order !== "desc";
        heading.dataset.order = descending ? "desc" : "asc";
        const body = table.tBodies[0];
        const rows = [...body.rows].sort((a, b) => {
          const [x, y] = [key(a), key(b)];
          const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return descending ? -order : order;
        });
        body.append(...rows);
      });
    });
  }
});
"#;

/// System fonts only: nothing to fetch.
const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 1.5rem auto; max-width: 1200px; padding: 0 1rem; }
h1 { margin: 0 0 .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta, .note { color: #555; } code { font-size: 90%; word-break: break-all; }
dl.figures { display: flex; flex-wrap: wrap; gap: .4rem 1.6rem; margin: 1rem 0; }
dl.figures div { min-width: 6rem; } dt { color: #666; font-size: 85%; } dd { margin: 0; font-size: 1.4rem; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .2rem .6rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: middle; }
thead th { border-bottom: 2px solid #ccc; font-weight: 600; } table.sortable thead th { cursor: pointer; } tbody th { font-weight: normal; max-width: 28rem; overflow-wrap: anywhere; }
.num { text-align: right; }
tr.drifted { background: #fde8e8; } tr.drifted strong { color: #b2182b; }
svg.bar .track { fill: #eee; } svg.bar .rate { fill: #b2182b; } svg .overall { stroke: #333; stroke-width: 1; stroke-dasharray: 3 2; }
.multiples { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: .6rem; }
figure { margin: 0; } figcaption { font-size: 90%; overflow-wrap: anywhere; }
svg.chart .axis { stroke: #999; } svg.chart .series { fill: none; stroke: #b2182b; stroke-width: 1.5; } svg.chart .point { fill: #b2182b; }
svg text { font: 10px system-ui, sans-serif; fill: #555; } svg.heatmap text.count { font-size: 9px; } svg.heatmap rect { stroke: #fff; } svg.heatmap rect.grid { fill: #f6f6f6; }
details { border: 1px solid #e4e4e4; border-radius: 4px; margin: .4rem 0; padding: .3rem .7rem; } summary { cursor: pointer; }
.pair { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; margin: .6rem 0; }
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LoadStats;
    use crate::views::confusion::Cell;
    use crate::views::drift::Distribution;

    const HOUR: i64 = 3_600_000;
    const AWKWARD: &str = "cam \"7\", <b>&co</b>";

    fn tally(correct: u64, incorrect: u64, pending: u64) -> Tally {
        Tally { correct, incorrect, pending }
    }

    fn context() -> ReportContext {
        ReportContext {
            source: "mongodb://db/?x=<1>".into(),
            as_of: "2026-11-30T12:00:00Z".into(),
            window_ms: HOUR,
            drift_alpha: 0.01,
            top_classes: 10,
        }
    }

    fn cell(producer: Option<&str>, truth: &str, inferred: &str) -> Cell {
        let scope = producer.map_or(Scope::All, |p| Scope::Producer(p.to_owned()));
        Cell { scope, ground_truth: truth.into(), inferred: inferred.into() }
    }

    fn labels(pairs: &[(&str, u64)]) -> Distribution {
        pairs.iter().map(|(label, n)| (label.to_string(), *n)).collect()
    }

    /// Two producers: `AWKWARD` judged in windows 0h, 1h and 3h (none at 2h), drifting; `idle`
    /// with pending records only.
    fn outcome() -> Outcome {
        let table = BTreeMap::from([(AWKWARD.to_owned(), tally(6, 2, 1)), ("idle".to_owned(), tally(0, 0, 4))]);
        let confusion = BTreeMap::from([
            (cell(None, "cat", "cat"), 6),
            (cell(None, "cat", "a<dog>"), 2),
            (cell(Some(AWKWARD), "cat", "cat"), 6),
            (cell(Some(AWKWARD), "cat", "a<dog>"), 2),
        ]);
        let windows = BTreeMap::from([
            ((AWKWARD.to_owned(), 0), tally(3, 1, 0)),
            ((AWKWARD.to_owned(), HOUR), tally(2, 0, 0)),
            ((AWKWARD.to_owned(), 3 * HOUR), tally(1, 1, 0)),
        ]);
        let drift = BTreeMap::from([(
            AWKWARD.to_owned(),
            LabelDrift {
                reference_period: Some((0, 2 * HOUR)),
                reference: labels(&[("cat", 500)]),
                window_start: 3 * HOUR,
                window: labels(&[("a<dog>", 400), ("cat", 100)]),
            },
        )]);
        let stats = LoadStats { records: 14, skipped: 1, untimed: 0, ..LoadStats::default() };
        Outcome { table, views: Some(Snapshot { confusion, windows, drift, ..Snapshot::default() }), stats }
    }

    #[test]
    fn every_name_and_label_is_escaped() {
        let page = render(&outcome(), &context());
        assert!(!page.contains("<b>") && !page.contains("<dog>") && !page.contains("<1>"), "{page}");
        assert!(page.contains("cam &quot;7&quot;, &lt;b&gt;&amp;co&lt;/b&gt;"));
        assert!(page.contains("a&lt;dog&gt;"));
        assert!(page.contains("mongodb://db/?x=&lt;1&gt;"));
    }

    #[test]
    fn self_contained() {
        let page = render(&outcome(), &context());
        for external in ["http://", "https://", "src=", "<link", "@import", "url(", "fetch("] {
            assert!(!page.contains(external), "{external} in the page");
        }
    }

    #[test]
    fn producers_sorted_by_error_rate_and_one_without_judged_records_shown_last() {
        let page = render(&outcome(), &context());
        let awkward = page.find("data-producer=\"cam &quot;7&quot;").unwrap();
        let idle = page.find("data-producer=\"idle\"").unwrap();
        assert!(awkward < idle);
        let idle_row = &page[idle..page[idle..].find("</tr>").unwrap() + idle];
        assert!(
            idle_row.contains(
                "<td class=\"num\">0</td><td class=\"num\">0</td><td class=\"num\">4</td><td class=\"num\" data-sort=\"-1\">–</td>"
            ),
            "{idle_row}"
        );
        assert!(page.contains("no judged record with a time"), "idle has no chart");
        assert!(
            page.contains("<dd id=\"figure-records\">13</dd>") && page.contains("<dd id=\"overall-rate\">25.00%</dd>")
        );
    }

    #[test]
    fn a_gap_window_breaks_the_line() {
        let page = render(&outcome(), &context());
        // 0h-1h joined, 3h alone.
        assert_eq!(page.matches("<polyline").count(), 1);
        assert_eq!(page.matches("<circle").count(), 3);
    }

    #[test]
    fn drift_is_flagged() {
        let page = render(&outcome(), &context());
        assert!(page.contains("<tr class=\"drifted\""), "{page}");
        assert!(page.contains("<strong>drifted</strong>"));
    }

    #[test]
    fn an_empty_outcome_renders() {
        let page = render(&Outcome::default(), &context());
        assert!(page.contains("there is no window to plot"));
        assert!(page.contains("No producer has a window"));
    }
}
