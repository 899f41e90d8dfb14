//! Plain-text tables for people: a header, columns padded to their widest
//! cell, two spaces between columns, the last column never padded. (Small
//! enough that a table crate would be more code to configure than this.)

/// A table being built.
#[derive(Debug, Clone)]
pub(super) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(super) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub(super) fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The rendered table, one line per row, each ending in `\n`.
    pub(super) fn render(&self) -> String {
        let n = self.header.len();
        let mut widths = vec![0usize; n];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                // Control characters would break the layout (and the terminal).
                let cell: String = cell
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                if i + 1 < n {
                    line.push_str(&cell);
                    line.extend(std::iter::repeat_n(
                        ' ',
                        widths[i] - cell.chars().count() + 2,
                    ));
                } else {
                    line.push_str(&cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["ID", "STATE", "CMD"]);
        t.row(vec!["1".into(), "running".into(), "sleep 3".into()]);
        t.row(vec!["12".into(), "success".into(), "true".into()]);
        assert_eq!(
            t.render(),
            "ID  STATE    CMD\n1   running  sleep 3\n12  success  true\n"
        );
    }

    #[test]
    fn short_rows_and_wide_cells() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["héllo".into()]);
        t.row(vec!["x\ty".into(), "z".into()]);
        assert_eq!(t.render(), "A      B\nhéllo\nx y    z\n");
    }

    #[test]
    fn empty_table_is_its_header() {
        assert_eq!(Table::new(&["ID", "STATE"]).render(), "ID  STATE\n");
    }
}
