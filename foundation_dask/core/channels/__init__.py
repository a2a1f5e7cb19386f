"""Any process: Channels, priority publish/subscribe over Dask's comm layer.

Four channels exist, in priority order ``control`` > ``events`` > ``data`` >
``telemetry``. Any process of the cluster (a client, code running in a task or an
actor on a worker) can :meth:`Channels.broadcast` to a channel and
:meth:`Channels.subscribe` to one. Messages of one publisher on one channel are
delivered in order.

Every process keeps one link to the scheduler, whose :class:`ChannelHub` fans messages
out to the subscribing processes:

* Publishers serialise with pickle (cloudpickle when needed) in the calling thread,
  assign a per-publisher, per-channel sequence number and append to the process's
  outbox, one queue per channel, bounded by ``foundation.channels.publisher-buffer``
  (``control`` excepted): when the scheduler cannot keep up or is unreachable the
  oldest messages are dropped, and every subscriber gets them counted as missed.
* Both the link and the hub send batches taken in priority order and keep at most
  ``WINDOW`` unacknowledged batches in flight, so a backlog waits in the priority
  queues rather than in first-in-first-out socket buffers: a ``control`` message
  published after a flood of ``telemetry`` overtakes whatever part of the flood has
  not been sent yet.
* Subscribers hold a bounded buffer (``foundation.channels.subscriber-buffer``); when
  it is full the oldest message is dropped and counted, in :attr:`Message.missed` of
  the next delivered message and in :attr:`Subscription.missed`. The hub's queues are
  bounded the same way and report their drops with the next message.

Modules, by the process they run in: ``_wire`` (any process: channel names, frames,
serialisation), ``_subscription`` and ``_link`` (client and worker: the receiving end,
the link), ``_facade`` (:class:`Channels`), ``_scheduler_plugin`` (:class:`ChannelHub`),
``_worker_plugin`` (:class:`WorkerChannels`).
"""

from foundation_dask.core.channels._facade import Channels
from foundation_dask.core.channels._scheduler_plugin import ChannelHub
from foundation_dask.core.channels._subscription import Message, Subscription
from foundation_dask.core.channels._wire import CHANNELS
from foundation_dask.core.channels._wire import CONTROL as CONTROL
from foundation_dask.core.channels._wire import MAX_BATCH as MAX_BATCH
from foundation_dask.core.channels._wire import MAX_BATCH_BYTES as MAX_BATCH_BYTES
from foundation_dask.core.channels._wire import PRIORITY_ORDER as PRIORITY_ORDER
from foundation_dask.core.channels._wire import ROUTES as ROUTES
from foundation_dask.core.channels._wire import WINDOW as WINDOW
from foundation_dask.core.channels._worker_plugin import WorkerChannels
from foundation_dask.errors import SubscriptionClosedError

__all__ = [
    "CHANNELS",
    "ChannelHub",
    "Channels",
    "Message",
    "Subscription",
    "SubscriptionClosedError",
    "WorkerChannels",
]
