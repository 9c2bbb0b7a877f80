@component @rest-api @writes-db
Feature: History over mixed data matches an independent model, page by page
  Three sensors and both feature types share captured_at values (1 to 3 rows per timestamp,
  within and across sensors and types), so page boundaries fall inside runs of equal timestamps:
  where a keyset condition with the wrong precedence leaks another sensor's rows. Every page is
  compared with the harness's model of what the request must return (harness::history): exactly
  the model's rows for that page, so no row missing, none repeated, none foreign, in
  (captured_at, message_id) order, and next_cursor set exactly while rows are left.

  Scenario Outline: Type <type>, from <from>, to <to>, <limit> rows a page: every page is the model's
    Given 24 stored Feature A and B rows for each of the sensors "h1, h2, h3", 1 to 3 sharing each captured_at, 1 s apart from "2026-05-01T00:00:00Z", seed <seed>
    Then paging the history of sensor "h2" with type "<type>" from "<from>" to "<to>" <limit> rows at a time serves exactly the model's rows on every page

    Examples:
      | type | from                      | to                        | limit | seed |
      | any  | open                      | open                      | 1     | 31   |
      | any  | open                      | open                      | 2     | 32   |
      | A    | open                      | open                      | 3     | 33   |
      | B    | open                      | open                      | 4     | 34   |
      | any  | 2026-05-01T00:00:03Z      | 2026-05-01T00:00:09Z      | 2     | 35   |
      | A    | 2026-05-01T00:00:02Z      | open                      | 5     | 36   |
      | B    | open                      | 2026-05-01T00:00:07Z      | 1     | 37   |
      | any  | 2026-05-01T02:00:03+02:00 | 2026-05-01T02:00:11+02:00 | 3     | 38   |
      | any  | open                      | open                      | 1000  | 39   |
