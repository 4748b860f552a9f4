"""The operator side's errors, rooted with the device's in TrustfleetError.

    TrustfleetError                      (trustfleet_device.errors)
      BundleError ...                    the document is bad: exit 1, "refused"
      DeviceError ...                    a device failed (device side only)
      MessageError                       a device's message is malformed: bad input,
                                         counted and dropped, never a usage error
      OperatorError                      the operator's tools could not do the job: exit 2
        UsageError                       bad arguments, unreadable files, a bad spec
        FleetStoreError                  the fleet database failed
        BrokerError                      the broker refused or could not be reached

Messages are one line that says what to do; they never carry key material.
"""

from trustfleet_device.errors import TrustfleetError


class OperatorError(TrustfleetError):
    """The operator's command could not do its job (exit code 2), not a verdict on a document."""


class UsageError(OperatorError):
    """A bad argument, an unreadable or unsuitable file, a bad spec."""


class FleetStoreError(OperatorError):
    """The fleet database could not be opened, read or written."""


class BrokerError(OperatorError):
    """The MQTT broker could not be reached, or refused a connection, subscription or publish."""


class MessageError(TrustfleetError, ValueError):
    """A device's status or report message is malformed: bad input from the fleet."""
