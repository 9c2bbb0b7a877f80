@security @rest-api
Feature: Every authentication and validation rule of the API, black box
  The same rules the services' unit tests check (services/src/rest_api/{auth,query,tests}.rs),
  asked of the running API, so the external profile (which runs no unit tests) checks them too.
  Each authentication case comes from a loopback address of its own, so the failures never use
  up the shared API's failed-authentication allowance for other scenarios.

  Scenario Outline: Authorization with <authorization> is refused with <challenge>
    When a client of its own calls GET "/v1/features?sensor_id={sensor}" with authorization "<authorization>"
    Then the response is a problem with status 401
    And the response has header "WWW-Authenticate" containing "<challenge>"
    And the response carries the security headers

    Examples:
      | authorization                     | challenge             |
      | a prefix of the valid token       | invalid_token         |
      | the valid token with a suffix     | invalid_token         |
      | the valid token in upper case     | invalid_token         |
      | the valid token after two spaces  | invalid_request       |
      | the valid token with a second word | invalid_request      |
      | the valid token twice             | invalid_request       |
      | Bearer                            | invalid_request       |
      | Bearer a%b                        | invalid_request       |
      | the valid token in the query only | Bearer realm=         |

  Scenario: The scheme is case-insensitive, the token is not
    When a client of its own calls GET "/v1/features?sensor_id={sensor}" with authorization "the valid token under the scheme bearer"
    Then the response status is 200

  Scenario Outline: Every endpoint refuses a missing token (<path>)
    When a client of its own calls GET "<path>" with authorization "none"
    Then the response is a problem with status 401

    Examples:
      | path                                                   |
      | /v1/features?sensor_id={sensor}                        |
      | /v1/sensors/{sensor}/features/latest?type=A            |
      | /v1/features/1b4e28ba-2fa1-11d2-883f-0016d3cca427      |

  Scenario Outline: History sensor_id "<value>" is a 400 naming sensor_id
    When I ask the API for the history of sensor "x" with sensor_id "<value>"
    Then the response is a problem with status 400
    And the problem names the invalid parameter "sensor_id"

    Examples:
      | value                                                                                                                             |
      |                                                                                                                                   |
      | a b                                                                                                                               |
      | sensör                                                                                                                            |
      | ../etc                                                                                                                            |
      | s1;DROP TABLE features                                                                                                            |
      | aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa |

  Scenario Outline: History <param> "<value>" is a 400 naming <param>
    When I ask the API for the history of sensor "x" with <param> "<value>"
    Then the response is a problem with status 400
    And the problem names the invalid parameter "<param>"

    Examples:
      | param  | value                                                |
      | type   | a                                                    |
      | type   | AB                                                   |
      | type   |                                                      |
      | from   | 2026-02-30T00:00:00Z                                 |
      | to     | 2024-01-01                                           |
      | limit  | -1                                                   |
      | limit  | +5                                                   |
      | limit  | 1.5                                                  |
      | limit  |                                                      |
      | limit  | 99999999999999999999                                 |
      | cursor | 1714979289123456_                                    |
      | cursor | 1_0123456789abcdef                                   |
      | cursor | 1_00000000-0000-0000-0000-000000000000               |
      | cursor | _00000000000000000000000000000000                    |
      | cursor | +1_00000000000000000000000000000000                  |
      | cursor | 10000000000000000000_00000000000000000000000000000000 |
      | cursor | 1_2_00000000000000000000000000000000                 |
      | cursor | eyJ0IjoiMjAyNC0wMS0wMVQwMDowMDowMFoiLCJpZCI6IngifQ   |
      | sensor | s                                                    |

  Scenario Outline: <case> is a 400 naming <param>
    When I call GET "<path>"
    Then the response is a problem with status 400
    And the problem names the invalid parameter "<param>"

    Examples:
      | case                          | path                                                              | param      |
      | a missing sensor_id           | /v1/features                                                      | sensor_id  |
      | an empty sensor_id            | /v1/features?sensor_id=                                           | sensor_id  |
      | a blank sensor_id             | /v1/features?sensor_id=%20                                        | sensor_id  |
      | a sensor_id of + (a space)    | /v1/features?sensor_id=+                                          | sensor_id  |
      | a tab as sensor_id            | /v1/features?sensor_id=%09                                        | sensor_id  |
      | a repeated sensor_id          | /v1/features?sensor_id={sensor}&sensor_id={sensor}               | sensor_id  |
      | an unencoded + in from        | /v1/features?sensor_id={sensor}&from=2024-01-01T00:00:00+02:00    | from       |
      | a non-UTF-8 sensor_id         | /v1/features?sensor_id=%FF                                        | sensor_id  |
      | latest without a type         | /v1/sensors/{sensor}/features/latest                              | type       |
      | latest with a lowercase type  | /v1/sensors/{sensor}/features/latest?type=a                       | type       |
      | latest with a paging param    | /v1/sensors/{sensor}/features/latest?type=A&limit=1               | limit      |
      | latest for a blank sensor     | /v1/sensors/%20/features/latest?type=A                            | sensor_id  |
      | latest for a sensor with a ;  | /v1/sensors/a%3Bb/features/latest?type=A                          | sensor_id  |
      | an almost-UUID                | /v1/features/0000000-0000-0000-0000-000000000000                  | message_id |
      | a non-UTF-8 message id        | /v1/features/%FF                                                  | message_id |
      | a by-id query parameter       | /v1/features/1b4e28ba-2fa1-11d2-883f-0016d3cca427?x=1             | x          |

  Scenario Outline: Every UUID text form is a message id (<form>): unknown ones are 404, not 400
    When I call GET "/v1/features/<id>"
    Then the response is a problem with status 404

    Examples:
      | form       | id                                             |
      | hyphenated | 1b4e28ba-2fa1-11d2-883f-0016d3cca427           |
      | simple     | 1b4e28ba2fa111d2883f0016d3cca427               |
      | braced     | %7B1b4e28ba-2fa1-11d2-883f-0016d3cca427%7D     |
      | URN        | urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427  |

  Scenario: Every cursor of the documented pattern is accepted, even a hand-made one
    When I ask the API for the history of sensor "x" with cursor "-9999999999999999999_00000000000000000000000000000000"
    Then the response lists 0 rows

  @needs-sut-control
  Scenario: Readiness is 503 while the database is unreachable, and 200 again once it is back
    Given a private pipeline whose REST API reaches the database and the broker through fault proxies
    Then the API's readiness becomes 200 within 10 s
    When the REST API's database link is cut
    Then the API's readiness becomes 503 within 10 s
    And the response is a problem with status 503
    When I ask the API for the history of sensor "x"
    Then the response is a problem with status 503
    When the REST API's database link is restored
    Then the API's readiness becomes 200 within 15 s
    When I ask the API for the history of sensor "x"
    Then the response status is 200

  @needs-sut-control
  Scenario: Readiness is 503 while the cache consumer has lost the broker, and 200 again once it reconnects
    Given a private pipeline whose REST API reaches the database and the broker through fault proxies
    Then the API's readiness becomes 200 within 10 s
    When the REST API's broker link is cut
    Then the API's readiness becomes 503 within 10 s
    And the response is a problem with status 503
    When the REST API's broker link is restored
    Then the API's readiness becomes 200 within 15 s
