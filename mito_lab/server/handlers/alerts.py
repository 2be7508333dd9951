"""Campaign alerts: webhooks notified when a label's runs are done or their failures pass a threshold."""

from mito_lab.server.handlers.base import ApiHandler, operation, query_argument
from mito_lab.wire import AlertInfo, AlertsResp, CreateAlertReq


class AlertsHandler(ApiHandler):
    @operation("Create a campaign alert (Write in the group); its secret is never shown again", CreateAlertReq, AlertInfo)
    async def post(self) -> None:
        user = await self.user()
        self.send(await self.mito.alerts.create(user, self.body()))

    @operation("A group's campaign alerts (Read in the group)", response=AlertsResp, query={"group": "the group (default: your own)"})
    async def get(self) -> None:
        user = await self.user()
        self.send(await self.mito.alerts.listing(user, query_argument(self, "group")))


class AlertHandler(ApiHandler):
    @operation("Delete a campaign alert (Write in its group)")
    async def delete(self, alert_id: str) -> None:
        user = await self.user()
        await self.mito.alerts.remove(user, int(alert_id))
        self.send(None)


default_handlers = [
    (r"/alerts", AlertsHandler),
    (r"/alerts/(?P<alert_id>[0-9]{1,18})", AlertHandler),
]
