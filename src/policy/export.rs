//! The `user_policy_dump` file writers (CSV, JSON, XLSX) and the download's file name: pure
//! functions from rows to bytes, built in memory, nothing written to disk.

use serde::ser::{SerializeMap, Serializer};
use time::Date;

/// The dump's columns, in order.
pub const COLUMNS: [&str; 7] = [
    "User Name",
    "User id",
    "Policy id",
    "Policy Name",
    "Policy Number",
    "Start of Policy",
    "Expiry of Policy",
];

/// One dump row; a `None` date is an empty cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpRow<'a> {
    pub user_name: &'a str,
    pub user_id: i64,
    pub policy_id: i64,
    pub policy_name: &'a str,
    pub policy_number: &'a str,
    pub start: Option<Date>,
    pub expiry: Option<Date>,
}

/// A dump format, parsed case-insensitively from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    Csv,
    Json,
    Xlsx,
}

impl DumpFormat {
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("csv") {
            Some(Self::Csv)
        } else if s.eq_ignore_ascii_case("json") {
            Some(Self::Json)
        } else if s.eq_ignore_ascii_case("xlsx") {
            Some(Self::Xlsx)
        } else {
            None
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Xlsx => "xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
            Self::Xlsx => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        }
    }

    pub fn render(self, rows: &[DumpRow<'_>]) -> Result<Vec<u8>, ExportError> {
        match self {
            Self::Csv => to_csv(rows),
            Self::Json => to_json(rows),
            Self::Xlsx => to_xlsx(rows),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("xlsx: {0}")]
    Xlsx(#[from] rust_xlsxwriter::XlsxError),
}

/// `YYYY-MM-DD` (without the `fmt` machinery: dumps format every date), "" for `None`.
fn iso(d: Option<Date>) -> String {
    let Some(d) = d else {
        return String::new();
    };
    let (y, m, day) = (d.year(), d.month() as u8, d.day());
    if !(0..=9999).contains(&y) {
        return format!("{y:04}-{m:02}-{day:02}");
    }
    let y = y as u32;
    let digit = |v: u32| char::from(b'0' + (v % 10) as u8);
    let mut s = String::with_capacity(10);
    for v in [y / 1000, y / 100, y / 10, y] {
        s.push(digit(v));
    }
    s.push('-');
    s.push(digit(u32::from(m) / 10));
    s.push(digit(u32::from(m)));
    s.push('-');
    s.push(digit(u32::from(day) / 10));
    s.push(digit(u32::from(day)));
    s
}

/// A text cell as a spreadsheet will not run it: one that begins with `=`, `+`, `-`, `@`, a
/// tab or a carriage return would be read as a formula (CSV injection), so it gets a leading
/// `'`, as OWASP advises.
fn neutral(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

/// RFC 4180: a header row, CRLF line ends, fields quoted when needed, text cells neutralised
/// against formula injection.
pub fn to_csv(rows: &[DumpRow<'_>]) -> Result<Vec<u8>, ExportError> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::with_capacity(64 + rows.len() * 96));
    w.write_record(COLUMNS)?;
    for r in rows {
        w.write_record([
            &*neutral(r.user_name),
            &r.user_id.to_string(),
            &r.policy_id.to_string(),
            &neutral(r.policy_name),
            &neutral(r.policy_number),
            &iso(r.start),
            &iso(r.expiry),
        ])?;
    }
    w.into_inner()
        .map_err(|e| ExportError::Csv(e.into_error().into()))
}

struct JsonRow<'r, 'a>(&'r DumpRow<'a>);

impl serde::Serialize for JsonRow<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(Some(COLUMNS.len()))?;
        m.serialize_entry(COLUMNS[0], r.user_name)?;
        m.serialize_entry(COLUMNS[1], &r.user_id)?;
        m.serialize_entry(COLUMNS[2], &r.policy_id)?;
        m.serialize_entry(COLUMNS[3], r.policy_name)?;
        m.serialize_entry(COLUMNS[4], r.policy_number)?;
        // A null date is an empty cell in every format: "" here too.
        m.serialize_entry(COLUMNS[5], &iso(r.start))?;
        m.serialize_entry(COLUMNS[6], &iso(r.expiry))?;
        m.end()
    }
}

/// An array of row objects keyed by the column names.
pub fn to_json(rows: &[DumpRow<'_>]) -> Result<Vec<u8>, ExportError> {
    let rows: Vec<JsonRow<'_, '_>> = rows.iter().map(JsonRow).collect();
    Ok(serde_json::to_vec(&rows)?)
}

/// One sheet: bold frozen header, numbers as numbers, real date cells, fitted widths.
pub fn to_xlsx(rows: &[DumpRow<'_>]) -> Result<Vec<u8>, ExportError> {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut wb = Workbook::new();
    let bold = Format::new().set_bold();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let ws = wb.add_worksheet();
    ws.set_name("User Policies")?;
    for (c, name) in COLUMNS.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, *name, &bold)?;
    }
    ws.set_freeze_panes(1, 0)?;
    for (i, r) in rows.iter().enumerate() {
        let row = u32::try_from(i + 1).unwrap_or(u32::MAX);
        ws.write_string(row, 0, r.user_name)?;
        // Ids up to 2^53 are exact as spreadsheet numbers.
        ws.write_number(row, 1, r.user_id as f64)?;
        ws.write_number(row, 2, r.policy_id as f64)?;
        ws.write_string(row, 3, r.policy_name)?;
        ws.write_string(row, 4, r.policy_number)?;
        for (col, d) in [(5u16, r.start), (6, r.expiry)] {
            if let Some(d) = d {
                // Excel dates start in 1900; earlier ones are written as text.
                match u16::try_from(d.year())
                    .ok()
                    .and_then(|y| ExcelDateTime::from_ymd(y, d.month() as u8, d.day()).ok())
                {
                    Some(dt) => ws.write_datetime_with_format(row, col, dt, &date)?,
                    None => ws.write_string(row, col, iso(Some(d)))?,
                };
            }
        }
    }
    ws.autofit();
    Ok(wb.save_to_buffer()?)
}

/// `Content-Disposition` for `UserPolicies-<user_id>-<first_name>.<ext>`: an ASCII-safe
/// `filename` (other characters become `_`, at most 64 of them) and, when that lost anything,
/// the exact name as RFC 5987 `filename*`.
pub fn content_disposition(user_id: i64, first_name: &str, ext: &str) -> String {
    let mut safe = String::new();
    let mut lossy = false;
    for ch in first_name.chars() {
        if safe.len() >= 64 {
            lossy = true;
            break;
        }
        if ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.') {
            safe.push(ch);
        } else {
            safe.push('_');
            lossy = true;
        }
    }
    let mut v = format!("attachment; filename=\"UserPolicies-{user_id}-{safe}.{ext}\"");
    if lossy {
        let full = format!("UserPolicies-{user_id}-{first_name}.{ext}");
        v.push_str("; filename*=UTF-8''");
        for b in full.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                v.push(b as char);
            } else {
                v.push_str(&format!("%{b:02X}"));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn rows() -> Vec<DumpRow<'static>> {
        vec![
            DumpRow {
                user_name: "Zoë, \"the\" Ünal",
                user_id: 3,
                policy_id: 10,
                policy_name: "Car Basic",
                policy_number: "P-7",
                start: Some(date!(2020 - 08 - 31)),
                expiry: None,
            },
            DumpRow {
                user_name: "Ana",
                user_id: 1,
                policy_id: 5,
                policy_name: "健康保险",
                policy_number: "P-4",
                start: Some(date!(1899 - 12 - 01)),
                expiry: Some(date!(2030 - 01 - 02)),
            },
        ]
    }

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_neutralised() {
        let names = [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tcmd",
            "\rx",
        ];
        for name in names {
            let row = DumpRow {
                user_name: name,
                user_id: 1,
                policy_id: 2,
                policy_name: name,
                policy_number: "=1+1",
                start: None,
                expiry: None,
            };
            let out = String::from_utf8(to_csv(&[row]).unwrap()).unwrap();
            let mut r = csv::Reader::from_reader(out.as_bytes());
            let rec = r.records().next().unwrap().unwrap();
            assert_eq!(&rec[0], format!("'{name}"), "{out}");
            assert_eq!(&rec[3], format!("'{name}"));
            assert_eq!(&rec[4], "'=1+1");
        }
        // Others are left alone, and JSON keeps the names as they are.
        assert_eq!(neutral("Zoë = 1"), "Zoë = 1");
    }

    #[test]
    fn csv_has_header_quotes_and_empty_null_dates() {
        let out = String::from_utf8(to_csv(&rows()).unwrap()).unwrap();
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "User Name,User id,Policy id,Policy Name,Policy Number,Start of Policy,Expiry of Policy"
        );
        assert_eq!(
            lines[1],
            "\"Zoë, \"\"the\"\" Ünal\",3,10,Car Basic,P-7,2020-08-31,"
        );
        assert_eq!(lines[2], "Ana,1,5,健康保险,P-4,1899-12-01,2030-01-02");
        assert_eq!(lines[3], "");
        assert_eq!(to_csv(&[]).unwrap().split(|&b| b == b'\n').count(), 2);
    }

    #[test]
    fn json_rows_keyed_by_column_in_order() {
        let out = String::from_utf8(to_json(&rows()).unwrap()).unwrap();
        assert!(out.starts_with(
            "[{\"User Name\":\"Zoë, \\\"the\\\" Ünal\",\"User id\":3,\"Policy id\":10,"
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["Expiry of Policy"], "");
        assert_eq!(v[1]["Start of Policy"], "1899-12-01");
        assert_eq!(to_json(&[]).unwrap(), b"[]");
    }

    #[test]
    fn xlsx_is_a_zip_with_a_sheet() {
        let out = to_xlsx(&rows()).unwrap();
        assert_eq!(&out[..2], b"PK");
        assert!(to_xlsx(&[]).unwrap().len() > 1000);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso(Some(date!(2020 - 08 - 31))), "2020-08-31");
        assert_eq!(iso(Some(date!(0099 - 01 - 02))), "0099-01-02");
        assert_eq!(iso(None), "");
    }

    #[test]
    fn formats_parse_case_insensitively() {
        assert_eq!(DumpFormat::parse("XlSx"), Some(DumpFormat::Xlsx));
        assert_eq!(DumpFormat::parse("CSV"), Some(DumpFormat::Csv));
        assert_eq!(DumpFormat::parse("pdf"), None);
        assert_eq!(DumpFormat::parse(""), None);
    }

    #[test]
    fn content_disposition_is_safe() {
        assert_eq!(
            content_disposition(1, "Ana", "csv"),
            "attachment; filename=\"UserPolicies-1-Ana.csv\""
        );
        let v = content_disposition(3, "Zoë \"x\"/..", "xlsx");
        assert!(
            v.starts_with("attachment; filename=\"UserPolicies-3-Zo___x__...xlsx\"; filename*=UTF-8''UserPolicies-3-Zo%C3%AB%20%22x%22%2F...xlsx"),
            "{v}"
        );
        let long = "a".repeat(300);
        let v = content_disposition(9, &long, "json");
        assert!(v.len() < 1000 && v.contains(&format!("-{}.json\"", "a".repeat(64))));
        assert!(v.is_ascii());
    }
}
