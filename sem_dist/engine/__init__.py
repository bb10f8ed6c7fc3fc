"""What the stages of ``protect`` run on, below every engine: the run's spec (:mod:`.spec`), the input as the
driver sees it (:mod:`.input`), Algorithm 4's units and ledger (:mod:`.units`, :mod:`.ledger`), the fitted
method's checkpoint (:mod:`.checkpoint`), the :class:`~.base.Engine` protocol and its in-process
implementation (:mod:`.local`). The Ray implementation is ``sem_dist.distributed.engine``; it imports this
package, never the stages (``sem_dist.protect``), which choose an engine once and hand it their work."""
