@load @rest
Feature: REST API latency and errors under load
  The API answers many concurrent readers quickly and correctly. Users send on schedules of
  their own and latency is measured from each request's intended send time (corrected for
  coordinated omission), in HdrHistograms; with several workers the histograms are added, never
  their percentiles averaged. A 429 is rate limiting,
  not an error; a 200 whose body breaks the contract is an error.

  Scenario: Latest readers at 500 requests/s
    Given 20 users read the latest features of 50 sensors for 30 s at 500 requests/s
    Then the p99 latency is at most 5 ms corrected for coordinated omission
    And at most 0.1 % of answers are errors
    And at most 1 % are rate-limited
    And the achieved rate is at least 95 % of the target

  Scenario: Dashboard users mixing latest, history and by-id reads
    Given 20 users run the mixed REST workload on 50 sensors for 30 s at 300 requests/s
    Then the p99 latency is at most 50 ms corrected for coordinated omission
    And at most 0.1 % of answers are errors
    And at most 1 % of answers are rate-limited

  @distributed
  Scenario: Latest readers spread over 4 worker processes
    Given 20 users read the latest features of 50 sensors for 30 s at 500 requests/s from 4 local workers
    Then the p99 latency is at most 5 ms corrected for coordinated omission
    And at most 0.1 % of answers are errors
    And at most 1 % are rate-limited
    And the achieved rate is at least 95 % of the target

  @smoke
  Scenario: Smoke: a few latest readers for 3 seconds
    Given 4 users read the latest features of 4 sensors for 3 s at 100 requests/s
    Then the p99 latency is at most 500 ms corrected for coordinated omission
    And at most 1 % of answers are errors
    And at most 1 % are rate-limited
    And the achieved rate is at least 80 % of the target

  @smoke @distributed
  Scenario: Smoke: the same readers split over 2 worker processes
    Given 4 users read the latest features of 4 sensors for 3 s at 100 requests/s from 2 local workers
    Then the p99 latency is at most 500 ms corrected for coordinated omission
    And at most 1 % of answers are errors
    And the achieved rate is at least 80 % of the target
