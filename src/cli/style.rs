//! Colour for terminal output: plain ANSI escapes, only when asked for.

use std::io::IsTerminal as _;

/// Whether to colour what is written to stdout: a terminal, and `NO_COLOR` unset or empty
/// (<https://no-color.org>).
pub fn color_for_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Bold,
    Dim,
    Red,
    Green,
    Yellow,
    Cyan,
}

impl Style {
    fn code(self) -> Option<&'static str> {
        match self {
            Style::Plain => None,
            Style::Bold => Some("1"),
            Style::Dim => Some("2"),
            Style::Red => Some("31"),
            Style::Green => Some("32"),
            Style::Yellow => Some("33"),
            Style::Cyan => Some("36"),
        }
    }
}

/// Writes styled text, or the text alone when colour is off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Painter {
    pub color: bool,
}

impl Painter {
    pub fn paint(self, style: Style, text: &str) -> String {
        match style.code() {
            Some(code) if self.color && !text.is_empty() => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_owned(),
        }
    }
}

/// A text table: columns padded to their widest cell, two spaces apart, cells styled after
/// padding so that escapes do not count as width.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<(String, Style)>>,
}

impl Table {
    pub fn header(columns: &[&str]) -> Table {
        Table {
            rows: vec![
                columns
                    .iter()
                    .map(|c| ((*c).to_owned(), Style::Bold))
                    .collect(),
            ],
        }
    }

    pub fn row(&mut self, cells: Vec<(String, Style)>) {
        self.rows.push(cells);
    }

    pub fn render(&self, indent: &str, painter: Painter) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|(text, _)| text.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = indent.to_owned();
            for (c, (text, style)) in row.iter().enumerate() {
                let last = c + 1 == row.len();
                line.push_str(&painter.paint(*style, text));
                if !last {
                    let pad = widths[c] - text.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A percentage from 0 to 100 with at most 4 decimals and no trailing zeros, as the file
/// writes it: `90%`, `0.5%`.
pub(crate) fn percent(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_as_written() {
        assert_eq!(percent(90.0), "90%");
        assert_eq!(percent(0.5), "0.5%");
        assert_eq!(percent(100.0 - 0.3333), "99.6667%");
        assert_eq!(percent(0.0), "0%");
    }

    #[test]
    fn table_pads_by_text_width_not_escapes() {
        let mut t = Table::header(&["A", "LONGER"]);
        t.row(vec![("xyz".into(), Style::Red), ("1".into(), Style::Plain)]);
        assert_eq!(
            t.render("", Painter { color: false }),
            "A    LONGER\nxyz  1\n"
        );
        let colored = t.render("", Painter { color: true });
        assert_eq!(
            colored,
            "\x1b[1mA\x1b[0m    \x1b[1mLONGER\x1b[0m\n\x1b[31mxyz\x1b[0m  1\n"
        );
    }
}
