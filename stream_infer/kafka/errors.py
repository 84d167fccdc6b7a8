"""The project's Kafka errors, whichever client runs.

The class names and the ``retriable`` flags mirror kafka-python's ``kafka.errors`` (the names the
commit path, the sink and the access checks were written against); both client implementations
translate into them at their boundary: confluent-kafka from librdkafka's codes
(``confluent.translate``), kafka-python from its own exception classes, by name
(``kafka_python.translate``). Nothing here imports a client library.
"""

from __future__ import annotations

from typing import Any


class KafkaError(Exception):
    retriable = False
    # A broker error code (Kafka's protocol), or None for a local error.
    errno: int | None = None
    # Where the error came from when translated: the client's own exception or error object.
    origin: Any = None

    def __str__(self) -> str:
        if not self.args:
            return type(self).__name__
        return f"{type(self).__name__}: {super().__str__()}"


class RetriableError(KafkaError):
    retriable = True


class IllegalStateError(KafkaError):
    pass


class IllegalArgumentError(KafkaError):
    pass


class CommitFailedError(KafkaError):
    pass


class KafkaConfigurationError(KafkaError):
    pass


class KafkaProtocolError(KafkaError):
    pass


class TransactionAbortedError(KafkaError):
    pass


class NoOffsetForPartitionError(KafkaError):
    pass


class KafkaTimeoutError(RetriableError):
    pass


class InvalidMetadataError(RetriableError):
    pass


class KafkaConnectionError(InvalidMetadataError):
    pass


class NodeNotReadyError(RetriableError):
    pass


class BrokerResponseError(KafkaError):
    pass


class UnknownError(BrokerResponseError):
    errno = -1


class AuthorizationError(BrokerResponseError):
    pass


def _retriable_response(name: str, errno: int) -> type[KafkaError]:
    return type(name, (RetriableError, BrokerResponseError), {"errno": errno})


class OffsetOutOfRangeError(BrokerResponseError):
    errno = 1


class UnknownTopicOrPartitionError(InvalidMetadataError, BrokerResponseError):
    errno = 3


class LeaderNotAvailableError(InvalidMetadataError, BrokerResponseError):
    errno = 5


class NotLeaderForPartitionError(InvalidMetadataError, BrokerResponseError):
    errno = 6


class RequestTimedOutError(RetriableError, BrokerResponseError):
    errno = 7


class MessageSizeTooLargeError(BrokerResponseError):
    errno = 10


class NetworkExceptionError(InvalidMetadataError, BrokerResponseError):
    errno = 13


class CoordinatorLoadInProgressError(RetriableError, BrokerResponseError):
    errno = 14


class CoordinatorNotAvailableError(RetriableError, BrokerResponseError):
    errno = 15


class NotCoordinatorError(RetriableError, BrokerResponseError):
    errno = 16


class IllegalGenerationError(BrokerResponseError):
    errno = 22


class UnknownMemberIdError(BrokerResponseError):
    errno = 25


class RebalanceInProgressError(BrokerResponseError):
    errno = 27


class TopicAuthorizationFailedError(AuthorizationError):
    errno = 29


class GroupAuthorizationFailedError(AuthorizationError):
    errno = 30


class ClusterAuthorizationFailedError(AuthorizationError):
    errno = 31


class UnsupportedSaslMechanismError(BrokerResponseError):
    errno = 33


class TopicAlreadyExistsError(BrokerResponseError):
    errno = 36


class InvalidProducerEpochError(BrokerResponseError):
    errno = 47


class InvalidTxnStateError(BrokerResponseError):
    errno = 48


class ConcurrentTransactionsError(RetriableError, BrokerResponseError):
    errno = 51


class TransactionCoordinatorFencedError(BrokerResponseError):
    errno = 52


class TransactionalIdAuthorizationFailedError(AuthorizationError):
    errno = 53


class SaslAuthenticationFailedError(BrokerResponseError):
    errno = 58


class UnknownProducerIdError(BrokerResponseError):
    errno = 59


class DelegationTokenAuthorizationFailedError(AuthorizationError):
    errno = 65


class GroupIdNotFoundError(BrokerResponseError):
    errno = 69


class FencedInstanceIdError(BrokerResponseError):
    errno = 82


class UnstableOffsetCommitError(RetriableError, BrokerResponseError):
    errno = 88


class ProducerFencedError(BrokerResponseError):
    errno = 90


# The other broker error codes: (code, kafka-python's class name, retriable). Their classes are
# made below; code that needs to name one of them should define it above instead.
_OTHER_CODES: tuple[tuple[int, str, bool], ...] = (
    (2, "CorruptRecordError", False),
    (4, "InvalidFetchRequestError", False),
    (8, "BrokerNotAvailableError", False),
    (9, "ReplicaNotAvailableError", True),
    (11, "StaleControllerEpochError", False),
    (12, "OffsetMetadataTooLargeError", False),
    (17, "InvalidTopicError", False),
    (18, "RecordListTooLargeError", False),
    (19, "NotEnoughReplicasError", True),
    (20, "NotEnoughReplicasAfterAppendError", True),
    (21, "InvalidRequiredAcksError", False),
    (23, "InconsistentGroupProtocolError", False),
    (24, "InvalidGroupIdError", False),
    (26, "InvalidSessionTimeoutError", False),
    (28, "InvalidCommitOffsetSizeError", False),
    (32, "InvalidTimestampError", False),
    (34, "IllegalSaslStateError", False),
    (35, "UnsupportedVersionError", False),
    (35, "IncompatibleBrokerVersion", False),
    (37, "InvalidPartitionsError", False),
    (38, "InvalidReplicationFactorError", False),
    (39, "InvalidReplicationAssignmentError", False),
    (40, "InvalidConfigurationError", False),
    (41, "NotControllerError", True),
    (42, "InvalidRequestError", False),
    (43, "UnsupportedForMessageFormatError", False),
    (44, "PolicyViolationError", False),
    (45, "OutOfOrderSequenceNumberError", False),
    (46, "DuplicateSequenceNumberError", False),
    (49, "InvalidProducerIdMappingError", False),
    (50, "InvalidTransactionTimeoutError", False),
    (54, "SecurityDisabledError", False),
    (55, "OperationNotAttemptedError", False),
    (56, "KafkaStorageError", True),
    (57, "LogDirNotFoundError", False),
    (60, "ReassignmentInProgressError", False),
    (61, "DelegationTokenAuthDisabledError", False),
    (62, "DelegationTokenNotFoundError", False),
    (63, "DelegationTokenOwnerMismatchError", False),
    (64, "DelegationTokenRequestNotAllowedError", False),
    (66, "DelegationTokenExpiredError", False),
    (67, "InvalidPrincipalTypeError", False),
    (68, "NonEmptyGroupError", False),
    (70, "FetchSessionIdNotFoundError", True),
    (71, "InvalidFetchSessionEpochError", True),
    (72, "ListenerNotFoundError", True),
    (73, "TopicDeletionDisabledError", False),
    (74, "FencedLeaderEpochError", True),
    (75, "UnknownLeaderEpochError", True),
    (76, "UnsupportedCompressionTypeError", False),
    (77, "StaleBrokerEpochError", False),
    (78, "OffsetNotAvailableError", True),
    (79, "MemberIdRequiredError", False),
    (80, "PreferredLeaderNotAvailableError", True),
    (81, "GroupMaxSizeReachedError", False),
    (83, "EligibleLeadersNotAvailableError", True),
    (84, "ElectionNotNeededError", True),
    (85, "NoReassignmentInProgressError", False),
    (86, "GroupSubscribedToTopicError", False),
    (87, "InvalidRecordError", False),
    (89, "ThrottlingQuotaExceededError", True),
    (91, "ResourceNotFoundError", False),
    (92, "DuplicateResourceError", False),
    (93, "UnacceptableCredentialError", False),
    (94, "InconsistentVoterSetError", False),
    (95, "InvalidUpdateVersionError", False),
    (96, "FeatureUpdateFailedError", False),
    (97, "PrincipalDeserializationFailureError", False),
    (98, "SnapshotNotFoundError", False),
    (99, "PositionOutOfRangeError", False),
    (100, "UnknownTopicIdError", True),
    (101, "DuplicateBrokerRegistrationError", False),
    (102, "BrokerIdNotRegisteredError", False),
    (103, "InconsistentTopicIdError", True),
    (104, "InconsistentClusterIdError", False),
    (105, "TransactionalIdNotFoundError", False),
    (106, "FetchSessionTopicIdError", True),
    (107, "IneligibleReplicaError", False),
    (108, "NewLeaderElectedError", False),
    (109, "OffsetMovedToTieredStorageError", False),
    (110, "FencedMemberEpochError", False),
    (111, "UnreleasedInstanceIdError", False),
    (112, "UnsupportedAssignorError", False),
    (113, "StaleMemberEpochError", False),
    (114, "MismatchedEndpointTypeError", False),
    (115, "UnsupportedEndpointTypeError", False),
    (116, "UnknownControllerIdError", False),
    (117, "UnknownSubscriptionIdError", False),
    (118, "TelemetryTooLargeError", False),
    (119, "InvalidRegistrationError", False),
    (120, "TransactionAbortableError", False),
    (121, "InvalidRecordStateError", False),
    (122, "ShareSessionNotFoundError", True),
    (123, "InvalidShareSessionEpochError", True),
    (124, "FencedStateEpochError", False),
    (125, "InvalidVoterKeyError", False),
    (126, "DuplicateVoterError", False),
    (127, "VoterNotFoundError", False),
)

_BY_CODE: dict[int, type[KafkaError]] = {}
_BY_NAME: dict[str, type[KafkaError]] = {}


def _register() -> None:
    for name, obj in list(globals().items()):
        if isinstance(obj, type) and issubclass(obj, KafkaError):
            _BY_NAME[name] = obj
            if isinstance(obj.errno, int):
                _BY_CODE.setdefault(obj.errno, obj)
    for code, name, retriable in _OTHER_CODES:
        if name in _BY_NAME:
            continue
        cls: type[KafkaError] = (
            _retriable_response(name, code)
            if retriable
            else type(name, (BrokerResponseError,), {"errno": code})
        )
        cls.__module__ = __name__
        globals()[name] = _BY_NAME[name] = cls
        _BY_CODE.setdefault(code, cls)


_register()


def for_code(code: int) -> type[KafkaError]:
    """The class of a broker error code (``UnknownError`` for a code this table lacks)."""
    return _BY_CODE.get(code, UnknownError)


def by_name(name: str) -> type[KafkaError] | None:
    """The class of this name (kafka-python's class names), or None."""
    return _BY_NAME.get(name)
