//! Output text for the CLI's three formats; pure functions of the API's answers (and of "now" for
//! ages), so every shape is unit-tested without a socket.
//!
//! - `table`: for people. Columns separated by two spaces, numbers right-aligned, times in UTC,
//!   control characters in names escaped so one cell stays on one line. Streamed tables (`query
//!   events`, `tail`) print their header once and widen a column when a longer cell arrives.
//! - `json`: for programs. A single answer is the agent's JSON, pretty-printed, passed on
//!   unchanged (fields the CLI does not know included); `devices` is the array of device objects.
//!   Streams of events (`query events`, `tail`) are JSON Lines: one compact event object per line,
//!   written as it arrives, so `jq -c`, `while read` loops and line-based tools work on them.
//! - `csv`: a header row, then one row per item, written by the `csv` crate: RFC 4180 quoting (a
//!   field with a comma, a double quote, CR or LF is quoted, quotes doubled); lines end in LF; a
//!   missing value is an empty field; times as both RFC 3339 (`ts`) and Unix ms (`ts_ms`).
//!
//! Layout: each resource (devices, latest values, events, series) has one list of [`Field`]s in
//! [`resources`]; its table and its CSV are both derived from that list, so a column cannot be
//! added to one and forgotten in the other by accident. [`cells`] holds the text of single cells.
//! `status` is the exception: its table is a summary line per area, its CSV every field of the
//! answer flattened, so they share no row.

mod cells;
mod resources;

use serde_json::Value;

pub use cells::{fmt_age, fmt_bytes, fmt_utc, fmt_value};
pub use resources::{
    devices_csv, devices_table, flatten, latest_csv, latest_table, series_csv, series_table,
    status_csv, status_table, EventWriter,
};

/// Output format of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The agent's JSON (JSON Lines for streams of events).
    Json,
    /// Comma-separated values with a header row (RFC 4180 quoting).
    Csv,
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

use Align::{Left, Right};

// ---------------------------------------------------------------------------------------------
// Fields: one definition per resource, both formats derived from it

/// The text of one cell of a row of `R`.
type Cell<R> = fn(&R) -> String;

/// How a field shows in a table.
struct TableCol<R> {
    head: &'static str,
    align: Align,
    /// Minimum width (streamed tables start wide enough for typical cells).
    width: usize,
    cell: TableCell<R>,
}

/// A table cell's text.
enum TableCell<R> {
    /// Its own (a time in UTC, a hex boot id, ...).
    Own(Cell<R>),
    /// The CSV cell's.
    AsCsv,
    /// The CSV cell's, or `-` when that is empty.
    CsvOrDash,
}

/// One field of a resource's rows: a CSV column, a table column, or both. A resource lists its
/// fields once; each format takes the fields it shows, in list order.
struct Field<R> {
    csv: Option<(&'static str, Cell<R>)>,
    table: Option<TableCol<R>>,
}

impl<R> Field<R> {
    /// A CSV column only.
    const fn csv(head: &'static str, cell: Cell<R>) -> Self {
        Field {
            csv: Some((head, cell)),
            table: None,
        }
    }

    /// A table column only.
    const fn table(head: &'static str, align: Align, cell: Cell<R>) -> Self {
        Field {
            csv: None,
            table: Some(TableCol {
                head,
                align,
                width: 0,
                cell: TableCell::Own(cell),
            }),
        }
    }

    /// This CSV column, also in the table as `head`, with its own text.
    const fn and_table(self, head: &'static str, align: Align, cell: Cell<R>) -> Self {
        self.in_table(head, align, TableCell::Own(cell))
    }

    /// This CSV column, also in the table as `head`, with the same text.
    const fn shown_as_is(self, head: &'static str, align: Align) -> Self {
        self.in_table(head, align, TableCell::AsCsv)
    }

    /// This CSV column, also in the table as `head`, with the same text or `-` for none.
    const fn shown_or_dash(self, head: &'static str, align: Align) -> Self {
        self.in_table(head, align, TableCell::CsvOrDash)
    }

    const fn in_table(self, head: &'static str, align: Align, cell: TableCell<R>) -> Self {
        Field {
            csv: self.csv,
            table: Some(TableCol {
                head,
                align,
                width: 0,
                cell,
            }),
        }
    }

    /// The table column at least `width` wide.
    const fn min_width(self, width: usize) -> Self {
        Field {
            csv: self.csv,
            table: match self.table {
                Some(TableCol {
                    head, align, cell, ..
                }) => Some(TableCol {
                    head,
                    align,
                    width,
                    cell,
                }),
                None => None,
            },
        }
    }

    fn table_cell(&self, r: &R) -> Option<String> {
        let csv = || self.csv.map(|(_, cell)| cell(r)).unwrap_or_default();
        self.table.as_ref().map(|t| match t.cell {
            TableCell::Own(cell) => cell(r),
            TableCell::AsCsv => csv(),
            TableCell::CsvOrDash => cells::or_dash(csv()),
        })
    }
}

/// The CSV header of `fields`.
fn csv_head<R>(fields: &[Field<R>]) -> Vec<&'static str> {
    fields.iter().filter_map(|f| f.csv.map(|c| c.0)).collect()
}

/// One CSV row of `fields`.
fn csv_row<R>(fields: &[Field<R>], r: &R) -> Vec<String> {
    fields
        .iter()
        .filter_map(|f| f.csv.map(|c| (c.1)(r)))
        .collect()
}

/// The table columns of `fields`: header, alignment, minimum width.
fn table_head<R>(fields: &[Field<R>]) -> Vec<(&'static str, Align, usize)> {
    fields
        .iter()
        .filter_map(|f| f.table.as_ref().map(|t| (t.head, t.align, t.width)))
        .collect()
}

/// One table row of `fields`.
fn table_row<R>(fields: &[Field<R>], r: &R) -> Vec<String> {
    fields.iter().filter_map(|f| f.table_cell(r)).collect()
}

/// The CSV of `rows`: a header record, then one record per row.
fn csv_of<R>(fields: &[Field<R>], rows: &[R]) -> String {
    let mut w = csv_writer();
    write_csv(&mut w, csv_head(fields));
    for r in rows {
        write_csv(&mut w, csv_row(fields, r));
    }
    csv_text(w)
}

/// The table of `rows` with the fields that have a table column; `head` may rename a header.
fn table_of<R>(fields: &[Field<R>], rows: &[R], head: impl Fn(&'static str) -> String) -> String {
    let heads: Vec<(String, Align)> = table_head(fields)
        .into_iter()
        .map(|(h, a, _)| (head(h), a))
        .collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| table_row(fields, r)).collect();
    table(&heads, &cells)
}

// ---------------------------------------------------------------------------------------------
// Tables

/// A whole table: widths fit the widest cell of each column; no trailing spaces.
pub fn table<S: AsRef<str>>(cols: &[(S, Align)], rows: &[Vec<String>]) -> String {
    let cols: Vec<(&str, Align, usize)> = cols.iter().map(|(h, a)| (h.as_ref(), *a, 0)).collect();
    let mut t = StreamTable::with_widths(&cols);
    for r in rows {
        t.widen(r);
    }
    let mut out = t.header();
    for r in rows {
        out.push_str(&t.row(r));
    }
    out
}

/// A table printed row by row: the header once, and a column widens (from then on) when a
/// longer cell arrives.
#[derive(Debug, Clone)]
pub struct StreamTable {
    cols: Vec<(String, Align, usize)>,
}

impl StreamTable {
    /// Columns with their header widths.
    pub fn new(cols: &[(&str, Align)]) -> StreamTable {
        let cols: Vec<(&str, Align, usize)> = cols.iter().map(|&(h, a)| (h, a, 0)).collect();
        StreamTable::with_widths(&cols)
    }

    /// Columns with at least these widths.
    pub fn with_widths(cols: &[(&str, Align, usize)]) -> StreamTable {
        StreamTable {
            cols: cols
                .iter()
                .map(|&(h, a, w)| (h.to_owned(), a, w.max(h.chars().count())))
                .collect(),
        }
    }

    fn widen(&mut self, cells: &[String]) {
        for ((_, _, w), c) in self.cols.iter_mut().zip(cells) {
            *w = (*w).max(cells::clean(c).chars().count());
        }
    }

    /// The header line.
    pub fn header(&self) -> String {
        let names: Vec<String> = self.cols.iter().map(|c| c.0.clone()).collect();
        self.line(&names)
    }

    /// One row (cells are escaped; missing cells are blank).
    pub fn row(&mut self, cells: &[String]) -> String {
        self.widen(cells);
        self.line(cells)
    }

    fn line(&self, cells: &[String]) -> String {
        let mut out = String::new();
        for (i, (_, align, w)) in self.cols.iter().enumerate() {
            let cell = cells::clean(cells.get(i).map(String::as_str).unwrap_or(""));
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            match align {
                Right => {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(&cell);
                }
                Left => {
                    out.push_str(&cell);
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
        out
    }
}

// ---------------------------------------------------------------------------------------------
// CSV and JSON

/// A CSV writer into memory: quoting only where RFC 4180 needs it, LF line ends.
fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(Vec::new())
}

fn write_csv<I>(w: &mut csv::Writer<Vec<u8>>, fields: I)
where
    I: IntoIterator,
    I::Item: AsRef<[u8]>,
{
    // Writing to memory fails only on a record of another length, which no caller writes.
    w.write_record(fields)
        .expect("a CSV record of the header's length");
}

fn csv_text(w: csv::Writer<Vec<u8>>) -> String {
    let bytes = w.into_inner().expect("flushing to memory cannot fail");
    String::from_utf8(bytes).expect("UTF-8 fields make UTF-8 records")
}

/// One CSV record, ending in LF.
pub fn csv_record<S: AsRef<str>>(fields: &[S]) -> String {
    let mut w = csv_writer();
    write_csv(&mut w, fields.iter().map(|f| f.as_ref()));
    csv_text(w)
}

/// Pretty JSON (an answer, or `devices`' array), ending in LF.
pub fn json_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// One JSON Lines line.
pub fn json_line(v: &Value) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_as_rfc_4180_says() {
        let field = |s: &str| {
            csv_record(&[s, "x"])
                .strip_suffix(",x\n")
                .unwrap()
                .to_owned()
        };
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("cr\r"), "\"cr\r\"");
        assert_eq!(field(""), "");
        // Only those: spaces, tabs, `#` and non-ASCII text stay bare.
        assert_eq!(field(" a\tb #ü"), " a\tb #ü");
        assert_eq!(csv_record(&["a", "b,c", ""]), "a,\"b,c\",\n");
    }

    #[test]
    fn fields_give_each_format_its_columns_in_list_order() {
        type F = Field<(i32, &'static str)>;
        let fields: [F; 5] = [
            F::csv("n", |r| r.0.to_string()).and_table("number", Right, |r| format!("#{}", r.0)),
            F::table("note", Left, |r| r.1.to_uppercase()),
            F::csv("text", |r| r.1.to_owned()),
            F::csv("same", |r| r.1.to_owned()).shown_as_is("same", Left),
            F::csv("dash", |r| r.1.to_owned()).shown_or_dash("dash", Left),
        ];
        let rows = [(1, "a,b"), (22, "")];
        assert_eq!(
            csv_of(&fields, &rows),
            "n,text,same,dash\n1,\"a,b\",\"a,b\",\"a,b\"\n22,,,\n"
        );
        assert_eq!(
            table_of(&fields, &rows, str::to_owned),
            "number  note  same  dash\n    #1  A,B   a,b   a,b\n   #22              -\n"
        );
        assert_eq!(
            table_of(&fields, &[], |h| h.replace("note", "n")),
            "number  n  same  dash\n"
        );
    }

    #[test]
    fn tables_align_and_escape() {
        let t = table(
            &[("name", Left), ("n", Right), ("note", Left)],
            &[
                vec!["a".into(), "1".into(), "x".into()],
                vec!["long\nname".into(), "1234".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "name           n  note\n\
             a              1  x\n\
             long\\nname  1234\n"
        );
    }

    #[test]
    fn stream_tables_widen_from_the_row_that_needs_it() {
        let mut t = StreamTable::with_widths(&[("a", Left, 3), ("b", Right, 2)]);
        assert_eq!(t.header(), "a     b\n");
        assert_eq!(t.row(&["x".into(), "1".into()]), "x     1\n");
        assert_eq!(t.row(&["wider".into(), "1".into()]), "wider   1\n");
        assert_eq!(t.row(&["x".into(), "1".into()]), "x       1\n");
    }
}
