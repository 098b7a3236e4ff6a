//! Searching emails: a validated query (words, page, size) and a page of results with a
//! total that may be a lower bound (counting stops at `search.count_limit`).

use super::{Field, Violation, Violations};

/// Most characters in a search query.
pub const MAX_SEARCH_CHARS: usize = 256;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size when none is given.
pub const DEFAULT_PAGE_SIZE: u32 = 10;
/// Highest page number; keeps the offset arithmetic far from overflow.
pub const MAX_PAGE: u32 = 1_000_000;

/// A validated search request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Words to look for; `None` lists every email.
    pub text: Option<String>,
    /// Page number, from 1.
    pub page: u32,
    pub size: u32,
}

impl SearchQuery {
    /// Checks a search request. Missing or zero `page`/`size` take their defaults, as the
    /// original service (and proto3, where 0 means unset) did.
    pub fn parse(
        text: Option<&str>,
        page: Option<i64>,
        size: Option<i64>,
    ) -> Result<Self, Violations> {
        let mut list = Vec::new();
        let text = text.map(str::trim).filter(|t| !t.is_empty());
        if let Some(text) = text {
            if text.chars().count() > MAX_SEARCH_CHARS {
                list.push(Violation::new(
                    Field::Search,
                    "length",
                    "must be at most 256 characters",
                ));
            } else if text.contains('\0') {
                list.push(Violation::new(
                    Field::Search,
                    "nul_character",
                    "must not contain NUL characters",
                ));
            }
        }
        let page = match page.unwrap_or(0) {
            0 => 1,
            p if (1..=i64::from(MAX_PAGE)).contains(&p) => p as u32,
            _ => {
                list.push(Violation::new(
                    Field::Page,
                    "range",
                    "must be between 1 and 1000000",
                ));
                1
            }
        };
        let size = match size.unwrap_or(0) {
            0 => DEFAULT_PAGE_SIZE,
            s if (1..=i64::from(MAX_PAGE_SIZE)).contains(&s) => s as u32,
            _ => {
                list.push(Violation::new(
                    Field::Size,
                    "range",
                    "must be between 1 and 100",
                ));
                DEFAULT_PAGE_SIZE
            }
        };
        Violations::check(list)?;
        Ok(SearchQuery {
            text: text.map(str::to_owned),
            page,
            size,
        })
    }

    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.size)
    }
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct SearchPage<T> {
    /// Every match when `total_exact`; otherwise a lower bound, because counting stopped
    /// at the count limit (an exact count of a common word reads the whole table).
    pub total_count: i64,
    pub total_exact: bool,
    pub page: u32,
    pub size: u32,
    pub items: Vec<T>,
    /// Whether at least one match follows this page.
    pub has_more: bool,
}

impl<T> SearchPage<T> {
    /// Assembles a page from a count that stopped after `limit + 1` matches (`counted`
    /// above `limit` means "more than `limit`") and the page's rows, fetched with one row
    /// more than `size` so that row tells whether more follow, whatever the count knows.
    pub fn assemble(query: &SearchQuery, counted: i64, limit: u32, mut rows: Vec<T>) -> Self {
        let size = query.size as usize;
        let has_more = rows.len() > size;
        rows.truncate(size);
        let total_exact = counted <= i64::from(limit);
        let total_count = if total_exact {
            counted
        } else {
            // Past the limit, a deep page itself proves more matches than the limit.
            let seen = match rows.len() {
                0 => 0,
                shown => query.offset() + shown as i64 + i64::from(has_more),
            };
            seen.max(i64::from(limit))
        };
        SearchPage {
            total_count,
            total_exact,
            page: query.page,
            size: query.size,
            items: rows,
            has_more,
        }
    }

    /// Pages holding `total_count` matches: a lower bound too when the count is not exact.
    pub fn total_pages(&self) -> i64 {
        (self.total_count + i64::from(self.size) - 1) / i64::from(self.size)
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> SearchPage<U> {
        SearchPage {
            total_count: self.total_count,
            total_exact: self.total_exact,
            page: self.page,
            size: self.size,
            items: self.items.into_iter().map(f).collect(),
            has_more: self.has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_defaults_and_bounds() {
        let q = SearchQuery::parse(None, None, None).unwrap();
        assert_eq!((q.text, q.page, q.size), (None, 1, DEFAULT_PAGE_SIZE));
        let q = SearchQuery::parse(Some("  "), Some(3), Some(100)).unwrap();
        assert_eq!(
            (q.text.clone(), q.page, q.size, q.offset()),
            (None, 3, 100, 200)
        );
        let err = SearchQuery::parse(Some("x"), Some(-1), Some(101)).unwrap_err();
        assert_eq!(
            err.fields().collect::<Vec<_>>(),
            vec![Field::Page, Field::Size]
        );
        let err = SearchQuery::parse(Some(&"x".repeat(257)), None, None).unwrap_err();
        assert_eq!(err.fields().collect::<Vec<_>>(), vec![Field::Search]);
    }

    fn query(page: i64, size: i64) -> SearchQuery {
        SearchQuery::parse(Some("x"), Some(page), Some(size)).unwrap()
    }

    #[test]
    fn pages_are_counted_up() {
        // 21 matches, page 2 of size 10: eleven rows fetched, so more follow.
        let page = SearchPage::assemble(&query(2, 10), 21, 1000, vec![(); 11]);
        assert_eq!((page.total_count, page.total_exact), (21, true));
        assert_eq!(page.items.len(), 10, "the extra row is not shown");
        assert_eq!(page.total_pages(), 3);
        assert!(page.has_more);
        let page = SearchPage::assemble(&query(2, 10), 20, 1000, vec![(); 10]);
        assert_eq!(page.total_pages(), 2);
        assert!(!page.has_more);
        let page = SearchPage::assemble(&query(1, 10), 0, 1000, Vec::<()>::new());
        assert_eq!(page.total_pages(), 0);
        assert!(!page.has_more);
    }

    #[test]
    fn a_count_at_the_limit_is_exact_and_one_past_it_is_a_lower_bound() {
        let page = SearchPage::assemble(&query(1, 10), 5, 5, vec![(); 5]);
        assert_eq!((page.total_count, page.total_exact), (5, true));
        assert_eq!(page.total_pages(), 1);
        assert!(!page.has_more);

        let page = SearchPage::assemble(&query(1, 2), 6, 5, vec![(); 3]);
        assert_eq!((page.total_count, page.total_exact), (5, false));
        assert_eq!(page.total_pages(), 3);
        assert!(page.has_more);
    }

    #[test]
    fn a_capped_count_grows_with_what_a_deep_page_proves() {
        // Limit 5, page 4 of size 2: rows 7 and 8 exist, and a ninth follows.
        let page = SearchPage::assemble(&query(4, 2), 6, 5, vec![(); 3]);
        assert_eq!((page.total_count, page.total_exact), (9, false));
        assert_eq!(page.total_pages(), 5);
        assert!(page.has_more);
        // The last page past the limit: nothing follows it.
        let page = SearchPage::assemble(&query(4, 2), 6, 5, vec![(); 1]);
        assert_eq!(page.total_count, 7);
        assert_eq!(page.total_pages(), 4);
        assert!(!page.has_more);
        // A page past every match is empty and says nothing follows.
        let page = SearchPage::assemble(&query(50, 2), 6, 5, Vec::<()>::new());
        assert_eq!(page.total_count, 5);
        assert!(!page.has_more);
    }
}
