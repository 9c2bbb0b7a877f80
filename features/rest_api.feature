@component @rest-api
Feature: The REST API serves real-time and historical features
  Latest features come from the API's cache (fed by its own fanout queues); history comes
  from PostgreSQL with keyset pagination.

  @smoke
  Scenario: The latest Feature A is served from the cache
    When sensor "mic" publishes 3 chunks of 440 Hz sine at amplitude 0.5
    Then the API eventually serves the latest Feature A of sensor "mic" from its last chunk
    And the API eventually serves the latest Feature B of sensor "mic" from its last chunk

  Scenario: The cache agrees with the newest stored row
    When sensor "mic" publishes 4 chunks of 1000 Hz sine at amplitude 0.3
    Then the API eventually serves the latest Feature A of sensor "mic" from its last chunk
    And the database eventually holds 4 Feature A rows for sensor "mic"
    And the latest Feature A of sensor "mic" from the API equals the newest stored row

  Scenario: An unknown sensor has no latest features
    When I ask the API for the latest Feature A of sensor "nobody"
    Then the response is a problem with status 404

  @writes-db
  Scenario: History pages through a large history without gaps or repeats
    Given 250 stored Feature A rows for sensor "long" captured every 250 ms from "2026-02-01T00:00:00Z"
    Then paging through the Feature A history of sensor "long" 100 rows at a time returns every seeded row exactly once, in order

  @writes-db
  Scenario: A stored feature is served by its message id
    Given 2 stored Feature B rows for sensor "seed" captured every 1 s from "2026-01-01T00:00:00+01:00"
    When I ask the API for seeded row 0 by its message id
    Then the response status is 200
    And the response body has "/feature_type" equal to "B"
    And the response equals seeded row 0

  Scenario: An unknown message id is a 404 problem
    When I ask the API for feature "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    Then the response is a problem with status 404

  Scenario Outline: Invalid <param> is a 400 problem naming it
    When I ask the API for the history of sensor "x" with <param> "<value>"
    Then the response is a problem with status 400
    And the problem names the invalid parameter "<param>"

    Examples:
      | param  | value                |
      | type   | C                    |
      | from   | yesterday            |
      | to     | 2026-13-01T00:00:00Z |
      | from   | 2026-01-01T00:00:00  |
      | limit  | 0                    |
      | limit  | 1001                 |
      | limit  | ten                  |
      | cursor | not-a-cursor         |
      | colour | blue                 |

  Scenario: from after to is an empty page, not an error
    When I ask the API for the Feature A history of sensor "x" from "2026-01-02T00:00:00Z" to "2026-01-01T00:00:00Z"
    Then the response lists 0 rows

  Scenario: A malformed message id is a 400 problem
    When I ask the API for feature "not-a-uuid"
    Then the response is a problem with status 400

  Scenario: An unknown feature type on the latest endpoint is a 400 problem
    When I ask the API for the latest features of sensor "x" with type "Z"
    Then the response is a problem with status 400

  Scenario: Unknown routes and methods are problems too
    When I call GET "/v1/nothing-here"
    Then the response is a problem with status 404
    When I call POST "/v1/features?sensor_id={sensor}"
    Then the response is a problem with status 405

  Scenario: Health and readiness need no token
    When I call GET "/healthz" with authorization "none"
    Then the response status is 200
    When I call GET "/readyz" with authorization "none"
    Then the response status is 200

  Scenario: The served OpenAPI document is the one in the repository
    Then the OpenAPI document served equals fixtures/contracts/openapi.json
