@security @rest-api
Feature: The REST API bounds what hostile clients can make it do
  What the schemathesis run (scripts/schemathesis.sh) does not reach: slow and idle connections,
  password-guessing clients, huge parameter lists and headers, requests the HTTP layer itself
  rejects, and pages of whatever size is stored. Bad requests get a 4xx problem body with the
  security headers, except where the HTTP layer answers before the application runs (see the
  contract, "Hostile clients").

  @needs-sut-control
  Scenario: A client trickling its request head is cut off at the header timeout
    Given a private pipeline whose REST API allows 500 ms for a request head
    Then a client sending its request head one byte every 100 ms is cut off within 1500 ms

  @needs-sut-control
  Scenario: An idle keep-alive connection is closed after the same timeout, not before
    Given a private pipeline whose REST API allows 800 ms for a request head
    Then a keep-alive connection left idle for 300 ms is still open
    And a keep-alive connection left idle after a response is closed within 2000 ms

  @needs-sut-control
  Scenario: Repeated failed authentication from one client is throttled, other clients are not
    Given a private pipeline whose REST API allows 3 failed authentications per client per minute
    When a client at "127.0.0.2" sends 5 requests with a wrong token
    Then the first 3 of them get 401 and the rest 429 with a Retry-After header
    When a client at "127.0.0.2" asks the API for the latest Feature A of sensor "x"
    Then the response is a problem with status 429
    When a client at "127.0.0.3" asks the API for the latest Feature A of sensor "x"
    Then the response is a problem with status 404

  Scenario: A huge parameter list gets a small problem that still names the problem
    When I ask the API for the history of sensor "x" with 900 unknown parameters
    Then the response is a problem with status 400
    And the problem names the invalid parameter "p0"
    And the response body is at most 4096 bytes
    And the response carries the security headers

  Scenario: An over-long request target is a 414 problem with the security headers
    When I send a request whose target is 9000 bytes long
    Then the response is a problem with status 414
    And the response carries the security headers
    And the response body is at most 4096 bytes

  Scenario Outline: Over-large headers (<count> fields of <size> bytes) are a 431 problem
    When I send a request with <count> extra header fields of <size> bytes each
    Then the response is a problem with status 431
    And the response carries the security headers

    Examples:
      | count | size  |
      | 70    | 10    |
      | 1     | 20000 |

  Scenario Outline: What the HTTP layer rejects itself (<defect>) gets its bare status and a closed connection
    Then a request with "<defect>" is answered <status> by the HTTP layer and the connection closed

    Examples:
      | defect                  | status |
      | a malformed request line | 400    |
      | a malformed header name | 400    |
      | 200 header fields       | 431    |

  @needs-sut-control @writes-db
  Scenario: A history page is bounded in bytes whatever is stored, and paging still sees every row
    Given a private pipeline whose REST API serves history pages of at most 2000 bytes
    And 12 stored Feature A rows for sensor "big" captured every 1 s from "2026-03-01T00:00:00Z"
    When I ask the API for the history of sensor "big" with limit "1000"
    Then the response lists fewer than 12 rows and a next_cursor
    And the response body is at most 2600 bytes
    And paging through the Feature A history of sensor "big" 1000 rows at a time returns every seeded row exactly once, in order

  @writes-db
  Scenario: The row limit caps a page of stored history
    Given 5 stored Feature B rows for sensor "capped" captured every 1 s from "2026-03-01T00:00:00Z"
    When I ask the API for the history of sensor "capped" with limit "2"
    Then the response lists 2 rows
    And the response body is at most 2400 bytes
