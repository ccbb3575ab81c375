//! Query strings → typed queries. Pure: no I/O, every failure a [`ApiError::BadRequest`] naming the
//! parameter.
//!
//! Rules: unknown and repeated parameters are errors (a typo must not silently widen a query);
//! `access_token` is accepted everywhere (the auth layer reads it); limits are hard.

use super::error::ApiError;
use super::time::{parse_instant, parse_span_ms};
use crate::store::query::Agg;

/// Default `events` page size.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `events` page.
pub const MAX_LIMIT: usize = 1000;
/// Most buckets one `series` request may produce.
pub const MAX_BUCKETS: i64 = 10_000;
/// Smallest `series` bucket.
pub const MIN_BUCKET_MS: i64 = 1_000;
/// Longest device id or sensor name accepted in a query.
const MAX_NAME: usize = 128;

/// Decoded `key=value` pairs, checked against the keys a route takes.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `raw` (the part after `?`), allowing only `allowed` keys (and `access_token`).
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if k == "access_token" {
                continue;
            }
            if !allowed.contains(&k.as_ref()) {
                let detail = if allowed.is_empty() {
                    "this route takes no parameters".to_owned()
                } else {
                    format!("unknown parameter; this route takes {}", allowed.join(", "))
                };
                return Err(ApiError::param(&clip(&k), detail));
            }
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::param(&k, "given more than once"));
            }
            out.push((k.into_owned(), v.into_owned()));
        }
        Ok(Params(out))
    }

    /// A value, if given (an empty value counts as not given).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn name(&self, key: &str) -> Result<Option<String>, ApiError> {
        match self.get(key) {
            Some(v) if v.len() > MAX_NAME => Err(ApiError::param(
                key,
                format!("longer than {MAX_NAME} bytes"),
            )),
            v => Ok(v.map(str::to_owned)),
        }
    }

    fn instant(&self, key: &str, now_ms: i64) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| parse_instant(v, now_ms).map_err(|e| ApiError::param(key, e)))
            .transpose()
    }
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Where a page continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// After `(ts_ms, id)` (queries with a device).
    Time(i64, i64),
    /// After this id (store order).
    Store(i64),
}

impl Cursor {
    /// The opaque text form.
    pub fn encode(self) -> String {
        match self {
            Cursor::Time(ts, id) => format!("t{ts}.{id}"),
            Cursor::Store(id) => format!("s{id}"),
        }
    }

    /// Parses [`Cursor::encode`]'s form (a time may be before 1970, an id is never negative).
    pub fn decode(s: &str) -> Option<Cursor> {
        let num = |t: &str| t.parse::<i64>().ok().filter(|v| *v >= 0);
        if let Some(rest) = s.strip_prefix('t') {
            let (ts, id) = rest.split_once('.')?;
            let ts = ts
                .parse::<i64>()
                .ok()
                .filter(|t| (super::time::MIN_MS..=super::time::MAX_MS).contains(t))?;
            Some(Cursor::Time(ts, num(id)?))
        } else {
            Some(Cursor::Store(num(s.strip_prefix('s')?)?))
        }
    }
}

/// `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// Device id.
    pub device: Option<String>,
    /// Sensor name.
    pub sensor: Option<String>,
    /// Inclusive.
    pub since_ms: Option<i64>,
    /// Exclusive.
    pub until_ms: Option<i64>,
    /// Page size.
    pub limit: usize,
    /// Continue after.
    pub cursor: Option<Cursor>,
}

impl EventsQuery {
    /// Parses and checks.
    pub fn parse(raw: Option<&str>, now_ms: i64) -> Result<EventsQuery, ApiError> {
        let p = Params::parse(
            raw,
            &["device", "sensor", "since", "until", "limit", "cursor"],
        )?;
        let limit = match p.get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::param(
                        "limit",
                        format!("{:?} is not a number from 1 to {MAX_LIMIT}", clip(v)),
                    ))
                }
            },
        };
        let device = p.name("device")?;
        let cursor = match p.get("cursor") {
            None => None,
            Some(c) => {
                let cur = Cursor::decode(c).ok_or_else(|| {
                    ApiError::param(
                        "cursor",
                        "not a cursor this API returned (pass next_cursor unchanged)",
                    )
                })?;
                let fits = matches!(
                    (&cur, &device),
                    (Cursor::Time(..), Some(_)) | (Cursor::Store(_), None)
                );
                if !fits {
                    return Err(ApiError::param(
                        "cursor",
                        "belongs to a query with different filters (keep device the same)",
                    ));
                }
                Some(cur)
            }
        };
        let q = EventsQuery {
            device,
            sensor: p.name("sensor")?,
            since_ms: p.instant("since", now_ms)?,
            until_ms: p.instant("until", now_ms)?,
            limit,
            cursor,
        };
        if let (Some(s), Some(u)) = (q.since_ms, q.until_ms) {
            if s >= u {
                return Err(ApiError::param("until", "must be after since"));
            }
        }
        Ok(q)
    }
}

/// `GET /api/v1/series`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Inclusive.
    pub since_ms: i64,
    /// Exclusive.
    pub until_ms: i64,
    /// Bucket width.
    pub bucket_ms: i64,
    /// Aggregate.
    pub agg: Agg,
}

impl SeriesQuery {
    /// Parses and checks (defaults: the last hour, 1-minute buckets, `avg`).
    pub fn parse(raw: Option<&str>, now_ms: i64) -> Result<SeriesQuery, ApiError> {
        let p = Params::parse(
            raw,
            &["device", "sensor", "since", "until", "bucket", "agg"],
        )?;
        let device = p
            .name("device")?
            .ok_or_else(|| ApiError::param("device", "is required"))?;
        let sensor = p
            .name("sensor")?
            .ok_or_else(|| ApiError::param("sensor", "is required"))?;
        let until_ms = p.instant("until", now_ms)?.unwrap_or(now_ms);
        let since_ms = p
            .instant("since", now_ms)?
            .unwrap_or((until_ms - 3_600_000).max(super::time::MIN_MS));
        if since_ms >= until_ms {
            return Err(ApiError::param("until", "must be after since"));
        }
        let bucket_ms = match p.get("bucket") {
            None => 60_000,
            Some(b) => parse_span_ms(b).map_err(|e| ApiError::param("bucket", e))?,
        };
        if bucket_ms < MIN_BUCKET_MS {
            return Err(ApiError::param("bucket", "must be at least 1s"));
        }
        let buckets = (until_ms - since_ms + bucket_ms - 1) / bucket_ms;
        if buckets > MAX_BUCKETS {
            return Err(ApiError::param(
                "bucket",
                format!("{buckets} buckets requested, at most {MAX_BUCKETS}: widen the bucket or narrow since/until"),
            ));
        }
        let agg = match p.get("agg") {
            None => Agg::Avg,
            Some(a) => Agg::parse(a).ok_or_else(|| {
                ApiError::param(
                    "agg",
                    format!("{:?} is not one of avg, min, max, count, last", clip(a)),
                )
            })?,
        };
        Ok(SeriesQuery {
            device,
            sensor,
            since_ms,
            until_ms,
            bucket_ms,
            agg,
        })
    }
}

/// `GET /api/v1/stream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamQuery {
    /// Device id.
    pub device: Option<String>,
    /// Sensor name.
    pub sensor: Option<String>,
    /// Resume after this id (query form of `Last-Event-ID`).
    pub last_event_id: Option<i64>,
}

impl StreamQuery {
    /// Parses; `header` is the `Last-Event-ID` header, which wins over the parameter.
    pub fn parse(raw: Option<&str>, header: Option<&str>) -> Result<StreamQuery, ApiError> {
        let p = Params::parse(raw, &["device", "sensor", "last_event_id"])?;
        let id = |name: &str, v: &str| {
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::param(name, format!("{:?} is not an event id", clip(v))))
        };
        let last_event_id = match (
            header.filter(|h| !h.trim().is_empty()),
            p.get("last_event_id"),
        ) {
            (Some(h), _) => Some(id("Last-Event-ID", h)?),
            (None, Some(v)) => Some(id("last_event_id", v)?),
            (None, None) => None,
        };
        Ok(StreamQuery {
            device: p.name("device")?,
            sensor: p.name("sensor")?,
            last_event_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn detail(e: ApiError) -> String {
        e.to_string()
    }

    #[test]
    fn events_defaults_limits_and_cursors() {
        let q = EventsQuery::parse(None, NOW).unwrap();
        assert_eq!(q.limit, DEFAULT_LIMIT);
        let q =
            EventsQuery::parse(Some("device=d1&since=-1h&limit=1000&cursor=t5.7"), NOW).unwrap();
        assert_eq!(q.since_ms, Some(NOW - 3_600_000));
        assert_eq!(q.cursor, Some(Cursor::Time(5, 7)));
        for (raw, names) in [
            ("limit=1001", "limit"),
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("since=yesterday", "since"),
            ("since=-1000000000000w", "since"),
            ("until=99999999999999999999", "until"),
            ("cursor=t5.7", "cursor"),
            ("device=a&cursor=s5", "cursor"),
            ("cursor=zz", "cursor"),
            ("since=-1h&until=-2h", "until"),
            ("devcie=a", "devcie"),
            ("device=a&device=b", "device"),
        ] {
            let e = detail(EventsQuery::parse(Some(raw), NOW).unwrap_err());
            assert!(e.starts_with(&format!("{names}: ")), "{raw}: {e}");
        }
    }

    #[test]
    fn huge_times_are_out_of_range_not_malformed() {
        let e = detail(EventsQuery::parse(Some("since=-1000000000000w"), NOW).unwrap_err());
        assert!(
            e.starts_with("since: ") && e.contains("out of range"),
            "{e}"
        );
        let e = detail(
            SeriesQuery::parse(Some("device=d&sensor=t&bucket=99999999999999999999s"), NOW)
                .unwrap_err(),
        );
        assert!(
            e.starts_with("bucket: ") && e.contains("out of range"),
            "{e}"
        );
    }

    #[test]
    fn cursor_round_trips() {
        for c in [
            Cursor::Time(0, 0),
            Cursor::Time(1_764_000_000_000, 99),
            Cursor::Store(5),
            Cursor::Time(-1, 3),
            Cursor::Time(super::super::time::MIN_MS, 0),
        ] {
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        assert_eq!(Cursor::decode("t1.-5"), None);
        assert_eq!(Cursor::decode("t-62135596800001.5"), None);
        assert_eq!(Cursor::decode("s"), None);
    }

    #[test]
    fn series_checks() {
        let q = SeriesQuery::parse(Some("device=d&sensor=t"), NOW).unwrap();
        assert_eq!(
            (q.since_ms, q.until_ms, q.bucket_ms, q.agg),
            (NOW - 3_600_000, NOW, 60_000, Agg::Avg)
        );
        let q = SeriesQuery::parse(Some("device=d&sensor=t&since=-1d&bucket=1m&agg=last"), NOW)
            .unwrap();
        assert_eq!((q.bucket_ms, q.agg), (60_000, Agg::Last));
        for (raw, name) in [
            ("sensor=t", "device"),
            ("device=d", "sensor"),
            ("device=d&sensor=t&bucket=500ms", "bucket"),
            ("device=d&sensor=t&since=-30d&bucket=1m", "bucket"),
            ("device=d&sensor=t&agg=median", "agg"),
            ("device=d&sensor=t&bucket=1000000000000w", "bucket"),
            ("device=d&sensor=t&since=-1000000000000w", "since"),
            ("device=d&sensor=t&limit=5", "limit"),
        ] {
            let e = detail(SeriesQuery::parse(Some(raw), NOW).unwrap_err());
            assert!(e.starts_with(&format!("{name}: ")), "{raw}: {e}");
        }
    }

    #[test]
    fn stream_resume_header_wins() {
        let q = StreamQuery::parse(Some("last_event_id=5&device=a"), Some("9")).unwrap();
        assert_eq!(q.last_event_id, Some(9));
        assert_eq!(
            StreamQuery::parse(Some("last_event_id=5"), None)
                .unwrap()
                .last_event_id,
            Some(5)
        );
        assert!(StreamQuery::parse(None, Some("x")).is_err());
        assert!(StreamQuery::parse(Some("access_token=abc"), None).is_ok());
    }
}
