@security @rest-api
Feature: The REST API authenticates, rate-limits and resists injection

  Scenario Outline: Authorization "<authorization>" gets <status>
    When I call GET "/v1/features?sensor_id={sensor}" with authorization "<authorization>"
    Then the response status is <status>

    Examples:
      | authorization        | status |
      | none                 | 401    |
      | Bearer               | 401    |
      | Bearer wrong-token   | 401    |
      | Basic dXNlcjpwYXNz   | 401    |
      | bearer-but-no-space  | 401    |
      | Token abc            | 401    |
      | the valid token      | 200    |

  Scenario Outline: 401s say how to authenticate (<authorization>)
    When I call GET "/v1/features?sensor_id={sensor}" with authorization "<authorization>"
    Then the response is a problem with status 401
    And the response has header "WWW-Authenticate" containing "<challenge>"

    Examples:
      | authorization      | challenge              |
      | none               | Bearer realm=          |
      | Basic dXNlcjpwYXNz | invalid_request |
      | Bearer wrong-token | invalid_token   |

  Scenario: Every response carries the security headers
    When I ask the API for the history of sensor "x"
    Then the response status is 200
    And the response carries the security headers
    When I call GET "/v1/features?sensor_id={sensor}" with authorization "none"
    Then the response carries the security headers

  @writes-db
  Scenario Outline: Injection in <param> never errors and never leaks another sensor's data
    Given 3 stored Feature A rows for sensor "victim" captured every 1 s from "2026-01-01T00:00:00Z"
    When I ask the API for the history of sensor "x" with <param> "<payload>"
    Then the response only contains rows of sensor "x"

    Examples:
      | param     | payload                                  |
      | sensor_id | x' OR '1'='1                             |
      | sensor_id | x'; DROP TABLE features; --              |
      | sensor_id | %' OR sensor_id LIKE '%                  |
      | type      | A' OR '1'='1                             |
      | from      | 2026-01-01T00:00:00Z' OR '1'='1          |
      | to        | now()                                    |
      | limit     | 1; DELETE FROM features                  |
      | cursor    | eyJ0IjoiMSBPUiAxPTEiLCJpZCI6IngnLS0ifQ== |

  Scenario: Injection in the message id path is a 400, not a 500
    When I ask the API for feature "1' OR '1'='1"
    Then the response is a problem with status 400

  Scenario: Injection in the sensor path of the latest endpoint is a 400
    When I ask the API for the latest Feature A of sensor "x' OR '1'='1"
    Then the response is a problem with status 400

  @needs-sut-control
  Scenario: Bursts beyond the rate limit get 429 with Retry-After
    Given a private pipeline whose REST API allows 5 requests per second with a burst of 5
    When I send 30 requests for the latest Feature A of sensor "x" at once
    Then at least 20 of them are rejected with 429 and a Retry-After header
