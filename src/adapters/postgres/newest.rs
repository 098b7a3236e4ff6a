//! The newest emails that match a listing's or a search's conditions, found in indexes
//! rather than by reading the table.
//!
//! PostgreSQL's indexes give either the newest rows (the btree on `created_at`) or the
//! rows that match (GIN), not the newest rows that match. Walking the newest rows and
//! checking each costs as many rows as come before the matches: a word common in the
//! table but absent from its newest 300,000 rows cost 300,000. Collecting every match
//! and sorting costs as many rows as match: most of the table for a common word.
//!
//! So each condition goes where it is cheap:
//! - A status or a sender alone (with time bounds) is one btree read in order:
//!   `email_deliveries_status_idx` and `email_messages_sender_idx` end in
//!   `(created_at, email_id)`.
//! - Words, a To recipient and a tag go to the GIN index `email_messages_search_idx`,
//!   which also holds each email's minute, hour and day of creation. Three ways are
//!   tried in turn:
//!   1. When the planner expects few matches, all of them are read and sorted.
//!   2. Else the newest rows are read and checked (a few thousand, more when they match
//!      densely): what is common among the newest emails ends here.
//!   3. Else the matches of a span of minutes, hours or days at a time, newest first:
//!      each read costs about the matches of its span, which are all older than those
//!      of the spans before. The next span is sized from how densely the last one
//!      matched, so a rare word goes back through the table in a few reads and a common
//!      one stops after the span it needs. A span with more matches than a read should
//!      return (a burst of matching emails) is walked row by row instead, newest first.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, types::Json};
use uuid::Uuid;

use crate::{domain::EmailStatus, error::Result};

use super::db_error;

/// An email's place in newest-first order: its creation time, then its id.
pub(super) type Key = (DateTime<Utc>, Uuid);

/// How far each way of finding the matches goes before the next is taken. The defaults
/// suit tables of millions of rows; tests make them tiny so every way runs.
#[derive(Debug, Clone, Copy)]
pub struct Probes {
    /// Most matches the planner may expect for all of them to be read and sorted.
    pub read_all_expected: f64,
    /// Most matches read that way; past it the matches were more than expected and the
    /// other ways are taken.
    pub read_all_max: i64,
    /// Newest rows read and checked first.
    pub walk_rows: i64,
    /// Most rows that walk is extended to when its matches were dense enough.
    pub walk_max_rows: i64,
    /// Most matches one read of a span returns (at least twice as many as are still
    /// wanted); a span holding more is dense, and its newest rows are walked instead.
    pub span_max: i64,
    /// Most rows walked through one dense span; past them the span's matches are read
    /// whole after all.
    pub dense_walk_max: i64,
}

impl Default for Probes {
    fn default() -> Self {
        Self {
            // Reading matches costs 4 to 8 µs each (they are spread over the table), so
            // only a few thousand. PostgreSQL expects a word it has no statistics for (a
            // rare one) in half a percent of the rows, 5,000 of a million: those go back
            // through the days instead, about 3 µs a day.
            read_all_expected: 2_000.0,
            read_all_max: 5_000,
            walk_rows: 2_000,
            walk_max_rows: 16_000,
            span_max: 1_000,
            dense_walk_max: 64_000,
        }
    }
}

/// The conditions of a listing or a search; all of them combine.
#[derive(Debug, Clone, Default)]
pub(super) struct Matching {
    /// Words, as `websearch_to_tsquery` reads them.
    pub words: Option<String>,
    /// An address among the To recipients, lower case: its words find the candidates
    /// in the index, the address itself decides.
    pub recipient: Option<String>,
    pub tag: Option<(String, String)>,
    pub status: Option<EmailStatus>,
    /// The sender's bare address, lower case.
    pub sender: Option<String>,
    /// Created at or after this time.
    pub after: Option<DateTime<Utc>>,
    /// Strictly older than this key (a cursor, or `createdBefore` with the nil id).
    pub before: Option<Key>,
}

/// The newest matches, newest first.
#[derive(Debug)]
pub(super) struct Newest {
    pub keys: Vec<Key>,
    /// Whether `keys` holds every match (there were fewer than were wanted).
    pub complete: bool,
}

impl Newest {
    fn of(mut keys: Vec<Key>, wanted: usize, complete: bool) -> Self {
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let complete = complete && keys.len() < wanted;
        keys.truncate(wanted);
        Newest { keys, complete }
    }
}

/// Whose creation time and id a query orders and bounds by: the message's, or the copy
/// beside the delivery state, which `email_deliveries_status_idx` is in the order of.
#[derive(Debug, Clone, Copy)]
enum Order {
    ByMessage,
    ByState,
}

impl Order {
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Order::ByMessage => ("m.created_at", "m.email_id"),
            Order::ByState => ("d.message_created_at", "d.email_id"),
        }
    }
}

/// Statuses `email_deliveries_status_idx` holds (its WHERE clause).
fn status_indexed(status: EmailStatus) -> bool {
    !matches!(status, EmailStatus::Queued | EmailStatus::Sending)
}

/// Minutes in an hour and in a day.
const HOUR: i32 = 60;
const DAY: i32 = 24 * HOUR;

/// The minute of a moment since the Unix epoch, as `email_created_minute` computes it.
fn minute_of(at: DateTime<Utc>) -> i32 {
    i32::try_from(at.timestamp().div_euclid(60)).unwrap_or(i32::MIN)
}

/// A pattern matching `address` as one whole mailbox of a header-form list (after a
/// start, `<`, `,` or a blank; before an end, `>`, `,` or a blank), for `~`.
fn whole_address(address: &str) -> String {
    let mut escaped = String::with_capacity(address.len() + 8);
    for c in address.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("(^|[<,[:space:]]){escaped}($|[>,[:space:]])")
}

impl Matching {
    /// Whether a condition needs the GIN index.
    fn indexed(&self) -> bool {
        self.words.is_some() || self.recipient.is_some() || self.tag.is_some()
    }

    /// The tables a query reads: the delivery state only when the status is asked for.
    fn tables(&self) -> &'static str {
        if self.status.is_some() {
            " FROM email_messages m JOIN email_deliveries d ON d.email_id = m.email_id"
        } else {
            " FROM email_messages m"
        }
    }

    /// ` AND …` for each condition the GIN index serves.
    pub(super) fn push_indexed(&self, sql: &mut QueryBuilder<Postgres>) {
        if let Some(words) = &self.words {
            sql.push(" AND m.search @@ websearch_to_tsquery('english', ")
                .push_bind(words.clone())
                .push(")");
        }
        if let Some(recipient) = &self.recipient {
            sql.push(" AND m.search @@ plainto_tsquery('english', ")
                .push_bind(recipient.clone())
                .push(")");
        }
        if let Some((name, value)) = &self.tag {
            sql.push(" AND m.tags @> ")
                .push_bind(Json(serde_json::json!({ name: value })))
                .push("::jsonb");
        }
    }

    /// ` AND …` for each condition checked on the rows (`d` the delivery state, `m` the
    /// message).
    fn push_filters(&self, sql: &mut QueryBuilder<Postgres>) {
        self.push_message_filters(sql);
        self.push_status(sql);
    }

    /// ` AND …` for the conditions on the message's addresses.
    fn push_message_filters(&self, sql: &mut QueryBuilder<Postgres>) {
        if let Some(recipient) = &self.recipient {
            sql.push(" AND lower(m.address_to) ~ ")
                .push_bind(whole_address(recipient));
        }
        if let Some(sender) = &self.sender {
            sql.push(" AND email_bare_address(m.address_from) = ")
                .push_bind(sender.clone());
        }
    }

    /// ` AND …` for the status, on the delivery state `d`.
    fn push_status(&self, sql: &mut QueryBuilder<Postgres>) {
        if let Some(status) = self.status {
            // A literal, so the planner knows whether the partial status index applies
            // (the status is one of a fixed set of words).
            sql.push(format_args!(" AND d.status = '{}'", status.as_str()));
            if !status_indexed(status) {
                // Always so for these (only a final email has none), and it lets the
                // planner read the index of unfinished emails instead of every state.
                sql.push(" AND d.next_attempt_at IS NOT NULL");
            }
        }
    }

    /// ` AND …` for the time bounds, on the creation time and id of `order` (the
    /// message's, or its copy beside the delivery state).
    fn push_bounds(&self, sql: &mut QueryBuilder<Postgres>, order: Order) {
        let (created_at, email_id) = order.columns();
        if let Some(after) = self.after {
            sql.push(format_args!(" AND {created_at} >= "))
                .push_bind(after);
        }
        if let Some((at, id)) = self.before {
            sql.push(format_args!(" AND ({created_at}, {email_id}) < ("))
                .push_bind(at)
                .push(", ")
                .push_bind(id)
                .push(")");
        }
    }

    /// The newest `wanted` matches.
    pub(super) async fn newest(
        &self,
        pool: &PgPool,
        wanted: usize,
        probes: &Probes,
    ) -> Result<Newest> {
        if wanted == 0 {
            return Ok(Newest {
                keys: Vec::new(),
                complete: false,
            });
        }
        if !self.indexed() {
            return self.in_order(pool, wanted).await;
        }
        if self.expected(pool).await? <= probes.read_all_expected {
            let all = self.read_all(pool, probes.read_all_max + 1).await?;
            if all.len() as i64 <= probes.read_all_max {
                return Ok(Newest::of(all, wanted, true));
            }
        }
        let mut walk = self.walk(pool, probes.walk_rows, self.before).await?;
        if walk.exhausted || walk.hits.len() >= wanted {
            return Ok(Newest::of(walk.hits, wanted, walk.exhausted));
        }
        // Matches dense enough among the newest rows: more of them is cheaper than spans.
        if !walk.hits.is_empty() {
            let rows = (wanted - walk.hits.len()) as i64 * walk.rows / walk.hits.len() as i64;
            let rows = rows + rows / 4 + 1;
            if walk.rows + rows <= probes.walk_max_rows {
                walk.go_on(self.walk(pool, rows, walk.last).await?);
                if walk.exhausted || walk.hits.len() >= wanted {
                    return Ok(Newest::of(walk.hits, wanted, walk.exhausted));
                }
            }
        }
        let mut keys = walk.hits;
        let complete = self
            .by_spans(pool, wanted, walk.last, probes, &mut keys)
            .await?;
        Ok(Newest::of(keys, wanted, complete))
    }

    /// Without words, recipient or tag: one read of a btree in newest-first order.
    async fn in_order(&self, pool: &PgPool, wanted: usize) -> Result<Newest> {
        // The status index gives the order when it holds the status asked for; else the
        // sender's, or the newest-first index, walked and filtered.
        let order = match self.status {
            Some(status) if status_indexed(status) => Order::ByState,
            _ => Order::ByMessage,
        };
        let (created_at, email_id) = order.columns();
        let mut sql = QueryBuilder::new("SELECT m.email_id, m.created_at");
        sql.push(self.tables()).push(" WHERE TRUE");
        self.push_filters(&mut sql);
        self.push_bounds(&mut sql, order);
        sql.push(format_args!(
            " ORDER BY {created_at} DESC, {email_id} DESC LIMIT "
        ))
        .push_bind(wanted as i64);
        let keys = fetch_keys(pool, sql).await?;
        let complete = keys.len() < wanted;
        Ok(Newest::of(keys, wanted, complete))
    }

    /// How many candidates the planner expects the GIN index to give: the indexed
    /// conditions only, since it badly underestimates the filters (a regular expression
    /// gets a default guess) and reading the candidates is what costs.
    async fn expected(&self, pool: &PgPool) -> Result<f64> {
        let mut sql =
            QueryBuilder::new("EXPLAIN (FORMAT JSON) SELECT 1 FROM email_messages m WHERE TRUE");
        self.push_indexed(&mut sql);
        self.push_bounds(&mut sql, Order::ByMessage);
        let (plan,): (Json<serde_json::Value>,) = sql
            .build_query_as()
            .persistent(false)
            .fetch_one(pool)
            .await
            .map_err(db_error)?;
        Ok(plan.0[0]["Plan"]["Plan Rows"]
            .as_f64()
            .unwrap_or(f64::INFINITY))
    }

    /// Every match, up to `limit`, in no order.
    async fn read_all(&self, pool: &PgPool, limit: i64) -> Result<Vec<Key>> {
        let mut sql = QueryBuilder::new("SELECT m.email_id, m.created_at");
        sql.push(self.tables()).push(" WHERE TRUE");
        self.push_indexed(&mut sql);
        self.push_filters(&mut sql);
        self.push_bounds(&mut sql, Order::ByMessage);
        sql.push(" LIMIT ").push_bind(limit);
        fetch_keys(pool, sql).await
    }

    /// The newest `rows` rows older than `before`, checked against every condition.
    async fn walk<'c, E>(&self, executor: E, rows: i64, before: Option<Key>) -> Result<Walk>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        let bounded = Matching {
            before,
            ..self.clone()
        };
        // The indexed conditions first, so that the others run on their matches only:
        // on 20,000 rows a stored vector's match took 0.5 ms (a tag's containment is of
        // the same kind), the recipient's regular expression 52 ms, the sender's bare
        // address 27 ms, and a join to every row's delivery state 80 ms (800 ms when the
        // planner hashed every state instead); the state is looked up for the rows that
        // match the rest.
        let mut sql = QueryBuilder::new("SELECT m.email_id, m.created_at, coalesce(TRUE");
        self.push_indexed(&mut sql);
        self.push_message_filters(&mut sql);
        if self.status.is_some() {
            sql.push(" AND EXISTS (SELECT 1 FROM email_deliveries d WHERE d.email_id = m.email_id");
            self.push_status(&mut sql);
            sql.push(")");
        }
        sql.push(
            ", FALSE) FROM (SELECT m.email_id, m.created_at, m.address_from, m.address_to, \
             m.search, m.tags FROM email_messages m WHERE TRUE",
        );
        bounded.push_bounds(&mut sql, Order::ByMessage);
        sql.push(" ORDER BY m.created_at DESC, m.email_id DESC LIMIT ")
            .push_bind(rows)
            .push(") m ORDER BY m.created_at DESC, m.email_id DESC");
        let checked: Vec<(Uuid, DateTime<Utc>, bool)> = sql
            .build_query_as()
            .persistent(false)
            .fetch_all(executor)
            .await
            .map_err(db_error)?;
        Ok(Walk {
            rows: checked.len() as i64,
            exhausted: (checked.len() as i64) < rows,
            last: checked.last().map(|&(id, at, _)| (at, id)).or(before),
            hits: checked
                .into_iter()
                .filter(|&(_, _, hit)| hit)
                .map(|(id, at, _)| (at, id))
                .collect(),
        })
    }

    /// The keys of the matches created in `slice` (older than `before`), at most `cap`
    /// of them, in no order.
    fn span_query(&self, slice: Slice, cap: Option<i64>) -> QueryBuilder<Postgres> {
        let mut sql = QueryBuilder::new("SELECT m.email_id, m.created_at");
        // The span as a subquery, not an array: given thousands of constants, the
        // planner estimates each one's rows, which took longer than the read.
        let (column, low, high) = match slice {
            Slice::Minutes(low, high) => ("email_created_minute", low, high),
            Slice::Hours(low, high) => ("email_created_hour", low, high),
            Slice::Days(low, high) => ("email_created_day", low, high),
        };
        sql.push(self.tables())
            .push(format_args!(
                " WHERE {column}(m.created_at) = ANY(ARRAY(SELECT generate_series("
            ))
            .push_bind(low)
            .push(", ")
            .push_bind(high)
            .push(")))");
        self.push_indexed(&mut sql);
        self.push_filters(&mut sql);
        self.push_bounds(&mut sql, Order::ByMessage);
        if let Some(cap) = cap {
            sql.push(" LIMIT ").push_bind(cap);
        }
        sql
    }

    /// Walks on from `walked` through the newest rows until `wanted` matches are found,
    /// the walk leaves `slice`, no rows are left, or `max_rows` rows were read in all;
    /// at most `walk_max_rows` at a time.
    async fn walk_through(
        &self,
        conn: &mut PgConnection,
        wanted: usize,
        mut walked: Walk,
        slice: Slice,
        max_rows: i64,
        probes: &Probes,
    ) -> Result<Walk> {
        // A few rows first, twice as many each time: the matches may start at once. In
        // a burst of matches the first rows are all matches, and every match costs its
        // filters (a recipient's regular expression), so the first chunk is sized by
        // the matches wanted, not by the rows a walk of unknown ground takes.
        let mut chunk = (4 * wanted as i64).max(1);
        while walked.hits.len() < wanted
            && !walked.exhausted
            && walked.rows < max_rows
            && within(walked.last, slice)
        {
            let rows = chunk.min(max_rows - walked.rows).max(1);
            chunk = (chunk * 2).min(probes.walk_max_rows.max(1));
            walked.go_on(self.walk(&mut *conn, rows, walked.last).await?);
        }
        walked.hits.truncate(wanted);
        Ok(walked)
    }

    /// The matches older than `before`, a span of minutes, hours or days at a time,
    /// newest first, added to `keys` until it holds `wanted`. Answers whether every
    /// match was read.
    async fn by_spans(
        &self,
        pool: &PgPool,
        wanted: usize,
        before: Option<Key>,
        probes: &Probes,
        keys: &mut Vec<Key>,
    ) -> Result<bool> {
        let mut bounded = Matching {
            before,
            ..self.clone()
        };
        let (oldest, newest): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT min(created_at), max(created_at) FROM email_messages")
                .fetch_one(pool)
                .await
                .map_err(db_error)?;
        let (Some(oldest), Some(newest)) = (oldest, newest) else {
            return Ok(true);
        };
        let oldest = minute_of(self.after.map_or(oldest, |after| after.max(oldest)));
        let mut minute = minute_of(before.map_or(newest, |(at, _)| at.min(newest)));
        let mut tx = pool.begin().await.map_err(db_error)?;
        // The planner takes the span and the words for independent: for the hour of a
        // burst of emails without the word it expects so many matches that reading the
        // whole table looks cheaper, or hashing every delivery state of the status asked
        // for, or a parallel scan whose workers take longer to start than the read takes.
        // The matches of a span are few: read them from the index, and their states
        // by primary key.
        sqlx::raw_sql(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
             SET LOCAL enable_mergejoin = off; SET LOCAL max_parallel_workers_per_gather = 0",
        )
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let mut span: i32 = 1;
        let complete = loop {
            let slice = Slice::ending_at(minute, span).not_before(oldest);
            let low = slice.first_minute();
            let span_wanted = wanted - keys.len();
            // From the top of the span: the matches above it are in `keys` already.
            let top = DateTime::from_timestamp((i64::from(minute) + 1) * 60, 0)
                .map(|at| (at, Uuid::nil()));
            let from = [bounded.before, top].into_iter().flatten().min();
            // A span of minutes gets a glance at its newest rows first. The index read of
            // a span returns every match in it before the first one (30 ms for a burst
            // of 150,000, however few are wanted), where a burst's newest rows give the
            // page at once; a span without a burst pays for a few rows. Spans of hours
            // and days are not glanced at: a burst fills a minute, not the top of a day.
            let glance_rows = match slice {
                Slice::Minutes(..) => {
                    (4 * span_wanted as i64).clamp(1, GLANCE_ROWS.min(probes.walk_rows).max(1))
                }
                Slice::Hours(..) | Slice::Days(..) => 0,
            };
            // Walked on only in a burst: at least every other row a match. Matches any
            // sparser are read from the index sooner.
            let mut walked = if glance_rows > 0 {
                self.walk(&mut *tx, glance_rows, from).await?
            } else {
                Walk::from(from)
            };
            if 2 * walked.hits.len() as i64 >= walked.rows.max(1)
                && !walked.exhausted
                && within(walked.last, slice)
                && 2 * span_wanted as i64 <= probes.walk_max_rows
            {
                walked = self
                    .walk_through(
                        &mut tx,
                        span_wanted,
                        walked,
                        slice,
                        probes.walk_max_rows,
                        probes,
                    )
                    .await?;
            }
            let mut found_here = walked.hits.len();
            walked.hits.truncate(span_wanted);
            keys.extend(walked.hits);
            if keys.len() >= wanted {
                break false;
            }
            if walked.exhausted {
                break true;
            }
            bounded.before = walked.last;
            // The rest of the span, from the index; none when the walk read all of it.
            if within(walked.last, slice) {
                let still_wanted = wanted - keys.len();
                let cap = (2 * still_wanted as i64).max(probes.span_max);
                let mut found = fetch_keys(&mut *tx, bounded.span_query(slice, Some(cap))).await?;
                if found.len() as i64 >= cap {
                    // More matches than a read should return: the span is dense (a burst
                    // of matching emails further down), where walking on finds a page
                    // sooner. On this transaction's connection: a listing holds one at a
                    // time.
                    let start = Walk::from(bounded.before);
                    let dense = self
                        .walk_through(
                            &mut tx,
                            still_wanted,
                            start,
                            slice,
                            probes.dense_walk_max,
                            probes,
                        )
                        .await?;
                    keys.extend(dense.hits);
                    if keys.len() >= wanted {
                        break false;
                    }
                    if dense.exhausted {
                        break true;
                    }
                    bounded.before = dense.last;
                    if within(dense.last, slice) {
                        // Walked as far as allowed without leaving the span: read the
                        // rest of its matches whole after all.
                        found = fetch_keys(&mut *tx, bounded.span_query(slice, None)).await?;
                    } else {
                        // Walked out of the span: go on below the last row walked.
                        minute = dense.last.map_or(oldest, |(at, _)| minute_of(at));
                        span = 1;
                        continue;
                    }
                }
                found_here += found.len();
                found.sort_unstable_by(|a, b| b.cmp(a));
                found.truncate(still_wanted);
                keys.extend(found);
                if keys.len() >= wanted {
                    break false;
                }
            }
            if low <= oldest {
                break true;
            }
            span = next_span(minute - low + 1, found_here.min(span_wanted), span_wanted);
            minute = low - 1;
        };
        tx.commit().await.map_err(db_error)?;
        Ok(complete)
    }
}

/// The minutes one read takes, newest last, both ends included: counted in minutes,
/// hours or whole days (`email_created_minute`, `_hour`, `_day`), so a read over months
/// looks up a key per day rather than one per minute, and a burst of emails in the last
/// hour can still be read a few minutes at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slice {
    Minutes(i32, i32),
    Hours(i32, i32),
    Days(i32, i32),
}

impl Slice {
    /// The `span` minutes up to `minute`, in the coarsest unit that fits: whole days when
    /// they are a day or more and end where a day ends, whole hours when they are an hour
    /// or more and end where an hour ends. A span that is long but does not end there
    /// stops where the hour or day starts instead, so the next read is in the coarser
    /// unit.
    fn ending_at(minute: i32, span: i32) -> Self {
        let end = minute + 1;
        let hour = minute.div_euclid(HOUR);
        if span >= DAY && end.rem_euclid(DAY) == 0 {
            let last = end.div_euclid(DAY) - 1;
            Slice::Days(last - span / DAY + 1, last)
        } else if span >= DAY && end.rem_euclid(HOUR) == 0 {
            Slice::Hours(minute.div_euclid(DAY) * DAY / HOUR, hour)
        } else if span >= HOUR && end.rem_euclid(HOUR) == 0 {
            Slice::Hours(hour - span / HOUR + 1, hour)
        } else if span >= HOUR {
            Slice::Minutes(hour * HOUR, minute)
        } else {
            Slice::Minutes(minute - span + 1, minute)
        }
    }

    /// The same, cut so it starts no earlier than the minute, hour or day of `oldest`
    /// (a minute).
    fn not_before(self, oldest: i32) -> Self {
        match self {
            Slice::Minutes(low, high) => Slice::Minutes(low.max(oldest), high),
            Slice::Hours(low, high) => Slice::Hours(low.max(oldest.div_euclid(HOUR)), high),
            Slice::Days(low, high) => Slice::Days(low.max(oldest.div_euclid(DAY)), high),
        }
    }

    /// The oldest minute it covers.
    fn first_minute(self) -> i32 {
        match self {
            Slice::Minutes(low, _) => low,
            Slice::Hours(low, _) => low * HOUR,
            Slice::Days(low, _) => low * DAY,
        }
    }
}

/// Most rows a glance at a span reads: enough to tell a burst of matches (whose first
/// rows are nearly all matches) from a span without one.
const GLANCE_ROWS: i64 = 32;

/// Whether rows older than `last` are left in `slice`: the walk that stopped at `last`
/// has not left it.
fn within(last: Option<Key>, slice: Slice) -> bool {
    last.is_none_or(|(at, _)| minute_of(at) >= slice.first_minute())
}

/// The minutes the next read takes: eight times as many after one that found nothing,
/// else as many as the last one's density says are needed, a quarter more, and at most
/// sixteen times as many.
fn next_span(span: i32, found: usize, still_wanted: usize) -> i32 {
    if found == 0 {
        return span.saturating_mul(8);
    }
    let needed = (still_wanted - found) as f64 * f64::from(span) / found as f64 * 1.25;
    (needed.ceil() as i32).clamp(1, span.saturating_mul(16))
}

/// What a walk of the newest rows found.
struct Walk {
    /// The matches, newest first.
    hits: Vec<Key>,
    /// Rows read.
    rows: i64,
    /// The last row read (or where the walk started, when it read none).
    last: Option<Key>,
    /// Whether no rows are left past the last one read.
    exhausted: bool,
}

impl Walk {
    /// A walk that has read nothing yet, starting below `before`.
    fn from(before: Option<Key>) -> Self {
        Walk {
            hits: Vec::new(),
            rows: 0,
            last: before,
            exhausted: false,
        }
    }

    /// Adds the walk that went on from where this one stopped.
    fn go_on(&mut self, more: Walk) {
        self.hits.extend(more.hits);
        self.rows += more.rows;
        self.last = more.last.or(self.last);
        self.exhausted = more.exhausted;
    }
}

async fn fetch_keys<'c, E>(executor: E, mut sql: QueryBuilder<Postgres>) -> Result<Vec<Key>>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let rows: Vec<(Uuid, DateTime<Utc>)> = sql
        .build_query_as()
        .persistent(false)
        .fetch_all(executor)
        .await
        .map_err(db_error)?;
    Ok(rows.into_iter().map(|(id, at)| (at, id)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minute_is_counted_from_the_epoch_as_postgres_counts_it() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(minute_of(at("1970-01-01T00:00:59.999999Z")), 0);
        assert_eq!(minute_of(at("1970-01-01T00:01:00Z")), 1);
        assert_eq!(minute_of(at("1969-12-31T23:59:59.5Z")), -1);
        assert_eq!(minute_of(at("2026-12-04T18:30:00+02:00")), 29_940_030);
    }

    #[test]
    fn slices_take_the_coarsest_unit_that_fits_where_they_end() {
        let day = 20_000;
        let noon = day * DAY + 12 * HOUR;
        // Short spans are minutes, across the start of an hour too.
        assert_eq!(
            Slice::ending_at(noon + 3, 8),
            Slice::Minutes(noon - 4, noon + 3)
        );
        // An hour or more, not ending where an hour ends: back to the hour's start.
        assert_eq!(
            Slice::ending_at(noon + 9, 90),
            Slice::Minutes(noon, noon + 9)
        );
        // Then whole hours: 90 minutes is one hour, 8 hours is 8.
        let hour = noon / HOUR;
        assert_eq!(
            Slice::ending_at(noon - 1, 90),
            Slice::Hours(hour - 1, hour - 1)
        );
        assert_eq!(
            Slice::ending_at(noon - 1, 8 * HOUR),
            Slice::Hours(hour - 8, hour - 1)
        );
        // A day or more, ending at an hour's end but not a day's: back to the day's start.
        assert_eq!(
            Slice::ending_at(noon - 1, 2 * DAY),
            Slice::Hours(day * 24, hour - 1)
        );
        // Then whole days.
        assert_eq!(
            Slice::ending_at(day * DAY - 1, 2 * DAY),
            Slice::Days(day - 2, day - 1)
        );
        assert_eq!(
            Slice::Days(day - 2, day - 1).first_minute(),
            (day - 2) * DAY
        );
        assert_eq!(
            Slice::Hours(hour - 8, hour - 1).first_minute(),
            noon - 8 * HOUR
        );
        // Never before the oldest email's minute, hour or day.
        assert_eq!(
            Slice::Minutes(noon - 4, noon + 3).not_before(noon),
            Slice::Minutes(noon, noon + 3)
        );
        assert_eq!(
            Slice::Hours(hour - 8, hour - 1).not_before(noon - 2 * HOUR - 5),
            Slice::Hours(hour - 3, hour - 1)
        );
        assert_eq!(
            Slice::Days(day - 9, day - 1).not_before((day - 3) * DAY + 7),
            Slice::Days(day - 3, day - 1)
        );
        // Before the epoch, the units count down the same way.
        assert_eq!(Slice::ending_at(-1, 2 * DAY), Slice::Days(-2, -1));
        assert_eq!(Slice::ending_at(-5, 2 * HOUR), Slice::Minutes(-HOUR, -5));
    }

    #[test]
    fn spans_grow_eightfold_after_nothing_and_by_density_after_something() {
        assert_eq!(next_span(1, 0, 21), 8);
        assert_eq!(next_span(8, 0, 21), 64);
        // 10 of 21 in 4 minutes: 11 more at 2.5 a minute, a quarter more: 6 minutes.
        assert_eq!(next_span(4, 10, 21), 6);
        // One match in a minute, 1,000 still wanted: capped at 16 times the span.
        assert_eq!(next_span(1, 1, 1_001), 16);
        assert_eq!(next_span(100, 99, 100), 2);
    }
}
