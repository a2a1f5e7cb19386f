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
  oldest messages are dropped, and every subscriber counts them as missed.
* Both the link and the hub send batches taken in priority order and keep at most
  ``WINDOW`` unacknowledged in flight, so a backlog waits in the priority queues
  rather than in first-in-first-out socket buffers: a ``control`` message published
  after a flood of ``telemetry`` overtakes whatever part of the flood has not been
  sent yet.
* Nothing is lost across a link break: each side keeps the batches it sent until they
  are acknowledged and queues them again (in priority order) when the link breaks; the
  hub keeps a process's queues and subscriptions while its link is down, and resumes
  them when the process links again (a random token proves it is the same process:
  a link id is bound to the comm that holds it, and a second link under a live id is
  refused). Receivers drop what they already have by the publisher's sequence numbers,
  so every message arrives once, in per-publisher order.
* Subscribers hold a bounded buffer (``foundation.channels.subscriber-buffer``
  messages and ``subscriber-buffer-bytes`` bytes); when it is full the oldest message
  is dropped. The hub's queues per subscribing process are bounded the same way
  (``control`` is never dropped there). Whatever a subscription does not get is counted
  once, exactly, in :attr:`Message.missed` of the next delivered message and in
  :attr:`Subscription.missed` (from the gaps in each publisher's sequence numbers).
* On a scheduler without the Foundation plugin, the link raises
  :class:`~foundation_dask.errors.FoundationNotInstalledError` naming the fix.

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
