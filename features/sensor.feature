@component @sensor @needs-sut-control
Feature: The sensor publishes persistent, gapless, evenly spaced chunks and waits for confirms
  The SUT's own sensor runs through the adapter (`<adapter> sensor`, APQ_SENSOR_* settings)
  against a private pipeline in which no Algorithm A runs: the harness takes every chunk off the
  work queue itself and sees it as a consumer would, AMQP properties included. Its broker link
  can go through a fault proxy of the scenario's own (the shared broker is never touched).

  Scenario: A synthetic sensor publishes persistent, gapless chunks spaced by their duration
    Given a private pipeline
    And the harness takes the chunks off the private pipeline's work queue
    When the sensor publishes 12 chunks of 100 ms of a 440 Hz sine at amplitude 0.5 as sensor "synth"
    Then the sensor exits 0 reporting 12 chunks sent
    And the work queue holds exactly 12 chunks from the sensor, sequences 0 to 11 without gaps or repeats
    And the sensor's chunks on the work queue are persistent and carry the contract's properties
    And the sensor's captured_at values advance by exactly one chunk duration
    And every chunk from the sensor is a 440 Hz sine at amplitude 0.5 by the harness's reference features

  Scenario: A sensor streams the WAV fixture chunk by chunk and loops at its end
    Given a private pipeline
    And the harness takes the chunks off the private pipeline's work queue
    When the sensor streams the WAV fixture "a440_1s_16k.wav" as 14 chunks of 100 ms as sensor "wav"
    Then the sensor exits 0 reporting 14 chunks sent
    And the work queue holds exactly 14 chunks from the sensor, sequences 0 to 13 without gaps or repeats
    And the sensor's chunks on the work queue are persistent and carry the contract's properties
    And the sensor's captured_at values advance by exactly one chunk duration
    And every chunk from the sensor holds the WAV file's frames in order, looping at its end

  Scenario: A stereo WAV whose end falls inside a chunk keeps its channels and frames in order
    Given a private pipeline
    And the harness takes the chunks off the private pipeline's work queue
    When the sensor streams a generated stereo WAV file of 350 ms at 22050 Hz as 6 chunks of 100 ms as sensor "stereo"
    Then the sensor exits 0 reporting 6 chunks sent
    And the work queue holds exactly 6 chunks from the sensor, sequences 0 to 5 without gaps or repeats
    And the sensor's captured_at values advance by exactly one chunk duration
    And every chunk from the sensor holds the WAV file's frames in order, looping at its end

  Scenario: A broker blip mid-stream loses no chunk and leaves no gap
    Given a private pipeline
    And the harness takes the chunks off the private pipeline's work queue
    # 3.5 s of stream left after the cut: room for a busy machine's harness to see chunk 5 late
    # (at 20 per second after chunk 10 the sensor once finished before the cut came).
    When the sensor publishes 40 chunks at 10 per second as sensor "blip" while its broker link is cut for 500 ms after chunk 5
    Then the sensor exits 0 reporting 40 chunks sent
    And the sensor reports at least 1 retried publish
    And the work queue holds every sequence from 0 to 39 from the sensor without gaps, any re-send identical
    And the sensor's chunks on the work queue are persistent and carry the contract's properties
    And the sensor's captured_at values advance by exactly one chunk duration

  Scenario: The sensor publishes the next chunk only once the last one is confirmed
    Given a private pipeline
    And the harness takes the chunks off the private pipeline's work queue
    When the sensor publishes 30 chunks at 20 per second as sensor "confirm" while the broker's confirms are held back 1500 ms from chunk 5 on
    Then while the confirms were held back the sensor published at most 2 more chunks
    And the sensor exits 0 reporting 30 chunks sent
    And the work queue holds exactly 30 chunks from the sensor, sequences 0 to 29 without gaps or repeats
