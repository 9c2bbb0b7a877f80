@chaos @needs-sut-control
Feature: The pipeline loses nothing when components die or restart

  Scenario: Chunks published while the DataWriter is down are written when it returns
    Given a private pipeline
    And 1 Algorithm A instance running
    And 1 Algorithm B instance running
    And 1 data writer instance running
    When all data writer instances are stopped
    And sensor "gap" publishes 20 chunks of 440 Hz sine at amplitude 0.5
    And 1 more data writer instance starts
    Then the database eventually holds 20 Feature A rows for sensor "gap"
    And the database eventually holds 20 Feature B rows for sensor "gap"

  Scenario: A gracefully stopped Algorithm A loses nothing
    Given a private pipeline
    And 1 Algorithm A instance running with prefetch 20
    And 1 Algorithm B instance running
    When sensor "calm" publishes 100 chunks of 440 Hz sine at amplitude 0.5
    And all Algorithm A instances are stopped
    And 1 more Algorithm A instance starts
    Then every chunk from sensor "calm" is processed, none lost

  Scenario: Unacked chunks are redelivered when their consumer dies
    Given a private pipeline
    And 1 Algorithm A instance running with prefetch 50
    And 1 Algorithm B instance running
    When sensor "crash" publishes 200 chunks of 440 Hz sine at amplitude 0.5
    And 1 Algorithm A instance is killed
    And 1 more Algorithm A instance starts
    Then every chunk from sensor "crash" is processed, none lost

  Scenario: Restarting Algorithm B mid-stream loses nothing
    Given a private pipeline
    And 1 Algorithm A instance running
    And 1 Algorithm B instance running
    When sensor "bounce" publishes 60 chunks of white noise at amplitude 0.3
    And Algorithm B is restarted
    And sensor "bounce" publishes 20 chunks of white noise at amplitude 0.3
    Then every chunk from sensor "bounce" is processed, none lost
