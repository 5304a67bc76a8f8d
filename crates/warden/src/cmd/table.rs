//! Aligned text tables, as the listing commands print them: one row a line, columns
//! padded to their widest cell and two spaces apart, no trailing blanks.

use std::io::Write;

/// Writes `rows` (the header first) with every column as wide as its widest cell.
pub fn write<const N: usize>(out: &mut impl Write, rows: &[[String; N]]) -> std::io::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
